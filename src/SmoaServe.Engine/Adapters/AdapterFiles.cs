using SmoaServe.Engine.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace SmoaServe.Engine.Adapters;

/// <summary>
/// An adapter directory: <c>adapter_config.json</c> + <c>adapter_model.safetensors</c> (PEFT / cpeft layout).
/// Everything in it is untrusted: sizes are bounded before reading and every tensor is validated against the base.
/// </summary>
public static class AdapterFiles
{
    public const string ConfigFile = "adapter_config.json";
    public const string WeightsFile = "adapter_model.safetensors";
    public const long MaxWeightsBytes = 4L << 30;
    public const int MaxTensors = 1 << 16;

    /// <summary>Reads and validates the adapter in <paramref name="directory"/> against <paramref name="model"/>.</summary>
    public static AdapterDefinition Read(string directory, BaseModelView model) => Read(directory, model, checkUpdateBound: true);

    /// <summary>
    /// Reads and validates an adapter directory, in an order that bounds the work an arbitrary folder can cause: both
    /// files must be regular files inside the folder within their size limits (<see cref="SafeFile"/>: no FIFO, device or
    /// link out of the folder is opened); the config is parsed; the weights file is memory-mapped and its header alone
    /// is checked (tensors tile the data, every name, dtype and shape is one this config and base expect) before any
    /// tensor data is read; then the values (finite, layouts) and, unless <paramref name="checkUpdateBound"/> is false,
    /// the size of the update (<see cref="AdapterBounds"/>). Off the model thread: no device work.
    /// </summary>
    public static AdapterDefinition Read(string directory, BaseModelView model, bool checkUpdateBound)
    {
        if (!Directory.Exists(directory)) throw new DirectoryNotFoundException($"adapter directory not found: {directory}");
        string configPath = Path.Combine(directory, ConfigFile);
        var config = AdapterConfig.Parse(SafeFile.ReadAllBytes(directory, ConfigFile, AdapterConfig.MaxConfigBytes), configPath);
        string weightsPath = Path.Combine(directory, WeightsFile);

        using var file = SafeTensorsFile.Open(SafeFile.OpenRegular(directory, WeightsFile, MaxWeightsBytes), weightsPath, MaxTensors);
        AdapterDefinition.CheckTensorSpecs(config, file.Infos, model, weightsPath);
        var tensors = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        AdapterDefinition definition;
        try
        {
            foreach (var name in file.Names) tensors[name] = file.ReadTensor(name);
            definition = AdapterDefinition.Validate(config, tensors, model, weightsPath);
        }
        finally
        {
            foreach (var t in tensors.Values) t.Dispose();
        }
        if (!checkUpdateBound) return definition;
        try { AdapterBounds.Check(definition, model, weightsPath); }
        catch { definition.Dispose(); throw; }
        return definition;
    }

    /// <summary>
    /// Writes an adapter directory (config + weights), SMoA always with its layout tensors so a reader skips the SVD.
    /// </summary>
    public static void Write(string directory, AdapterDefinition adapter, Func<int, Model.Projection, Smoa.SmoaLayout>? layoutOf = null)
    {
        Directory.CreateDirectory(directory);
        var c = adapter.Config;
        var json = new Dictionary<string, object?>
        {
            ["peft_type"] = c.Kind == AdapterKind.Smoa ? "SMOA" : "LORA",
            ["task_type"] = "CAUSAL_LM",
            ["r"] = c.R,
            ["lora_alpha"] = c.LoraAlpha,
            ["lora_dropout"] = 0.0,
            ["target_modules"] = c.TargetModules.Select(Model.ProjectionNames.ModuleName).ToArray(),
            ["bias"] = "none",
            ["base_model_name_or_path"] = null,
            ["inference_mode"] = true,
        };
        if (c.Kind == AdapterKind.Smoa) { json["num_blocks"] = c.NumBlocks; json["branch_ranks"] = c.BlockRanks.ToArray(); }
        else json["use_rslora"] = c.UseRslora;
        File.WriteAllText(Path.Combine(directory, ConfigFile), System.Text.Json.JsonSerializer.Serialize(json, new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));

        using var scope = NewDisposeScope();
        var tensors = new List<(string, Tensor)>();
        foreach (var ((layer, proj), f) in adapter.Modules.OrderBy(e => e.Key))
        {
            string prefix = $"base_model.model.model.layers.{layer}.{Model.ProjectionNames.ModulePath(proj)}.";
            if (c.Kind == AdapterKind.Lora)
            {
                tensors.Add((prefix + "lora_A.weight", f.A[0]!));
                tensors.Add((prefix + "lora_B.weight", f.B[0]!));
                continue;
            }
            var layout = f.CarriedLayout ?? layoutOf?.Invoke(layer, proj);
            for (int k = 0; k < c.NumBlocks; k++)
            {
                if (f.A[k] is { } a) tensors.Add((prefix + $"lora_A.{k}.weight", a));
                if (f.B[k] is { } b) tensors.Add((prefix + $"lora_B.{k}.weight", b));
                if (layout is not null)
                {
                    tensors.Add((prefix + $"smoa_rows.{k}", tensor(layout.Rows[k])));
                    tensors.Add((prefix + $"smoa_cols.{k}", tensor(layout.Cols[k])));
                }
            }
        }
        SafeTensorsWriter.Write(Path.Combine(directory, WeightsFile), tensors, new Dictionary<string, string> { ["format"] = "pt" });
    }
}
