using System.Text;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.WebUtilities;
using Microsoft.Net.Http.Headers;
using SmoaServe.Engine.Adapters;
using SmoaServe.Platform.Storage;

namespace SmoaServe.Server;

/// <summary>
/// Reads a multipart adapter upload (field <c>name</c>, files <c>adapter_config.json</c> and
/// <c>adapter_model.safetensors</c>) into a staging folder, within limits checked before and while reading: the declared
/// length, the part count and headers, each part's size. Every violation is a 400 naming it; the staging folder is
/// deleted on failure. The files' content is validated afterwards by the engine's reader.
/// </summary>
public static class AdapterUpload
{
    public const int MaxNameFieldBytes = 1024;
    private const int MaxParts = 8;

    public sealed record Parts(string Name, string Staging);

    public static async Task<Parts> ReadAsync(HttpContext http, AdapterFileStore files, ServerOptions options)
    {
        var request = http.Request;
        long limit = options.MaxUploadBytes;
        if (request.ContentLength is { } declared && declared > limit)
            throw Bad($"The upload declares {declared} bytes; at most {limit} are accepted (MaxUploadBytes).", "upload_too_large");
        if (http.Features.Get<IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } size) size.MaxRequestBodySize = limit;
        if (!MediaTypeHeaderValue.TryParse(request.ContentType, out var type) || !type.MediaType.Equals("multipart/form-data", StringComparison.OrdinalIgnoreCase))
            throw Bad("An adapter upload is multipart/form-data with a field 'name' and the files adapter_config.json and adapter_model.safetensors.");
        string boundary = HeaderUtilities.RemoveQuotes(type.Boundary).Value ?? "";
        if (boundary.Length is 0 or > 70) throw Bad("The multipart boundary is missing or longer than 70 characters.");

        string staging = files.CreateStaging();
        try
        {
            string? name = null;
            var seen = new HashSet<string>(StringComparer.Ordinal);
            var reader = new MultipartReader(boundary, request.Body) { HeadersCountLimit = 16, HeadersLengthLimit = 16 * 1024, BodyLengthLimit = limit };
            int parts = 0;
            while (await reader.ReadNextSectionAsync(http.RequestAborted) is { } section)
            {
                if (++parts > MaxParts) throw Bad($"The upload has more than {MaxParts} parts.");
                if (!ContentDispositionHeaderValue.TryParse(section.ContentDisposition, out var disposition)
                    || !disposition.DispositionType.Equals("form-data", StringComparison.OrdinalIgnoreCase))
                    throw Bad("Every part of the upload needs 'Content-Disposition: form-data'.");
                string field = HeaderUtilities.RemoveQuotes(disposition.Name).Value ?? "";
                string? fileName = disposition.IsFileDisposition() ? HeaderUtilities.RemoveQuotes(disposition.FileName.HasValue ? disposition.FileName : disposition.FileNameStar).Value : null;
                if (fileName is null && field == "name")
                {
                    if (name is not null) throw Bad("The field 'name' is given twice.", param: "name");
                    name = await ReadText(section.Body, MaxNameFieldBytes, "name", http.RequestAborted);
                    continue;
                }
                string file = fileName ?? field;
                long partLimit = file switch
                {
                    AdapterFiles.ConfigFile => AdapterConfig.MaxConfigBytes,
                    AdapterFiles.WeightsFile => limit,
                    _ => throw Bad($"Unexpected part '{Shorten(file)}': an upload holds the field 'name' and the files {AdapterFiles.ConfigFile} and {AdapterFiles.WeightsFile}."),
                };
                if (!seen.Add(file)) throw Bad($"The file {file} is given twice.");
                await CopyBounded(section.Body, Path.Combine(staging, file), partLimit, file, http.RequestAborted);
            }
            if (name is null) throw Bad("The field 'name' is missing.", param: "name");
            foreach (var required in new[] { AdapterFiles.ConfigFile, AdapterFiles.WeightsFile })
                if (!seen.Contains(required)) throw Bad($"The file {required} is missing.");
            return new Parts(name, staging);
        }
        catch (Exception e)
        {
            files.DeleteStaging(staging);
            if (e is InvalidDataException or IOException && e is not BadHttpRequestException && !http.RequestAborted.IsCancellationRequested)
                throw Bad("The multipart body is malformed: " + e.Message);
            throw;
        }
    }

    private static async Task<string> ReadText(Stream body, int max, string field, CancellationToken ct)
    {
        using var buffer = new MemoryStream();
        await CopyBounded(body, buffer, max, field, ct);
        try { return new UTF8Encoding(false, true).GetString(buffer.GetBuffer(), 0, (int)buffer.Length); }
        catch (DecoderFallbackException) { throw Bad($"The field '{field}' is not valid UTF-8.", param: field); }
    }

    private static async Task CopyBounded(Stream body, string path, long max, string what, CancellationToken ct)
    {
        await using var file = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16, FileOptions.Asynchronous);
        await CopyBounded(body, file, max, what, ct);
    }

    private static Task CopyBounded(Stream body, Stream target, long max, string what, CancellationToken ct) =>
        RequestBody.CopyAtMostAsync(body, target, max, () => Bad($"{what} is larger than the {max} bytes allowed.", "upload_too_large"), ct);

    private static ApiException Bad(string message, string? code = null, string? param = null) => ApiException.BadRequest(message, param, code);

    private static string Shorten(string s) => s.Length <= 80 ? s : s[..80] + "…";
}
