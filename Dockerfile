# SmoaServe container image.
#   CPU (default):  docker build -t smoaserve .
#   CUDA:           docker build --build-arg TORCH_BACKEND=cuda -t smoaserve:cuda .
#   Run:            docker run -p 8000:8000 -e SMOA_ADMIN_KEY=secret -v /path/to/llama:/models/base -v $PWD/adapters:/adapters smoaserve
# The CUDA image builds against the managed TorchSharp package only (-p:SmoaTorchBackend=cuda) and runs on a PyTorch
# CUDA runtime image, whose libtorch (libtorch_cuda.so, ...) TorchSharp binds to through LD_LIBRARY_PATH.
ARG TORCH_BACKEND=cpu

FROM mcr.microsoft.com/dotnet/sdk:10.0 AS build
ARG TORCH_BACKEND
WORKDIR /src
COPY . .
RUN dotnet publish src/SmoaServe.Cli -c Release -r linux-x64 --self-contained false -p:SmoaTorchBackend=${TORCH_BACKEND} -o /app

FROM mcr.microsoft.com/dotnet/aspnet:10.0 AS runtime-cpu
WORKDIR /app
COPY --from=build /app .

FROM pytorch/pytorch:2.10.0-cuda12.8-cudnn9-runtime AS runtime-cuda
RUN apt-get update && apt-get install -y --no-install-recommends wget ca-certificates libicu-dev \
 && wget -q https://dot.net/v1/dotnet-install.sh && bash dotnet-install.sh --channel 10.0 --runtime aspnetcore --install-dir /usr/share/dotnet \
 && ln -s /usr/share/dotnet/dotnet /usr/bin/dotnet && rm dotnet-install.sh && rm -rf /var/lib/apt/lists/*
ENV LD_LIBRARY_PATH=/opt/conda/lib/python3.11/site-packages/torch/lib
WORKDIR /app
COPY --from=build /app .
ENV SMOA__DEVICE=cuda

FROM runtime-${TORCH_BACKEND}
ENV ASPNETCORE_URLS=http://0.0.0.0:8000 SMOA__ADAPTERSDIR=/adapters SMOA__DATA=/data
VOLUME ["/models", "/adapters", "/data"]
EXPOSE 8000
ENTRYPOINT ["dotnet", "/app/smoa.dll"]
CMD ["serve", "--model", "/models/base"]
