# SmoaServe container image, with the bundled default model (models/default) and the example adapter inside.
#   CPU (default):  docker build -t smoaserve .
#   CUDA:           docker build --build-arg TORCH_BACKEND=cuda -t smoaserve:cuda .
#   Run:            docker run --rm -p 8000:8000 -e SMOA_ADMIN_KEY=secret smoaserve
#   Your model:     docker run --rm -p 8000:8000 -e SMOA_ADMIN_KEY=secret -v /path/to/llama:/models/base:ro \
#                     -e SMOA__MODEL=/models/base -v smoa-data:/data -v $PWD/adapters:/adapters smoaserve
# The server listens on 0.0.0.0:8000 inside the container, so an admin key is required (SMOA_ADMIN_KEY).
# The CUDA image builds against the managed TorchSharp package only (-p:SmoaTorchBackend=cuda) and runs on a PyTorch
# CUDA runtime image, whose libtorch (libtorch_cuda.so, ...) TorchSharp binds to through LD_LIBRARY_PATH. The
# libstdc++ fix (build/torchsharp-glibcxx) is applied by `dotnet publish` to libLibTorchSharp.so, the one native
# library the image takes from the build stage, so it holds on the runtime image's libstdc++.
ARG TORCH_BACKEND=cpu

FROM mcr.microsoft.com/dotnet/sdk:10.0 AS build
ARG TORCH_BACKEND
WORKDIR /src
COPY . .
RUN dotnet publish src/SmoaServe.Cli -c Release -r linux-x64 --self-contained false -p:SmoaTorchBackend=${TORCH_BACKEND} -o /app

FROM mcr.microsoft.com/dotnet/aspnet:10.0 AS runtime-cpu

FROM pytorch/pytorch:2.10.0-cuda12.8-cudnn9-runtime AS runtime-cuda
RUN apt-get update && apt-get install -y --no-install-recommends wget ca-certificates libicu-dev \
 && wget -q https://dot.net/v1/dotnet-install.sh && bash dotnet-install.sh --channel 10.0 --runtime aspnetcore --install-dir /usr/share/dotnet \
 && ln -s /usr/share/dotnet/dotnet /usr/bin/dotnet && rm dotnet-install.sh && rm -rf /var/lib/apt/lists/*
# appended to whatever the base image sets, not replacing it
ENV LD_LIBRARY_PATH=${LD_LIBRARY_PATH:+${LD_LIBRARY_PATH}:}/opt/conda/lib/python3.11/site-packages/torch/lib
ENV SMOA__DEVICE=cuda

FROM runtime-${TORCH_BACKEND}
# the .NET images have the non-root user "app" (uid 1654); the PyTorch image does not
RUN id -u app >/dev/null 2>&1 || useradd --uid 1654 --create-home --shell /usr/sbin/nologin app
WORKDIR /app
COPY --from=build /app /app
COPY models/default /app/models/default
COPY adapters/dictionary-card /adapters/dictionary-card
RUN mkdir -p /data && chown -R app /data /adapters
USER app
ENV ASPNETCORE_URLS=http://0.0.0.0:8000 SMOA__MODEL=/app/models/default SMOA__ADAPTERSDIR=/adapters SMOA__DATA=/data
VOLUME ["/data", "/adapters"]
EXPOSE 8000
# bash's /dev/tcp: no curl or wget needed in the image
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8000 && printf 'GET /health HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["dotnet", "/app/smoa.dll"]
CMD ["serve"]
