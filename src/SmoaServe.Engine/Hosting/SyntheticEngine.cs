using SmoaServe.Engine.Adapters;
using SmoaServe.Engine.Model;
using SmoaServe.Text;

namespace SmoaServe.Engine.Hosting;

/// <summary>
/// A random-weight Llama (<see cref="SyntheticLlama"/>) served like a checkpoint, for load tests where a step costs real
/// compute. Text goes through a real checkpoint's tokenizer; the synthetic vocabulary must cover it (generated ids
/// beyond the tokenizer decode as nothing). Random adapters are built in memory.
/// </summary>
public static class SyntheticEngine
{
    public static EngineSetup Setup(string spec, string tokenizerDir, int slots, int maxSequenceLength)
    {
        var config = SyntheticLlama.ParseSpec(spec);
        var tokenizer = TokenizerLoader.Load(tokenizerDir);
        if (config.VocabSize < tokenizer.VocabSize)
            throw new ArgumentException($"synthetic vocab {config.VocabSize} is smaller than the tokenizer's {tokenizer.VocabSize}");
        return new EngineSetup(new ClampedTokenizer(tokenizer), null, new HashSet<int>(),
            () => new ServingBackend(EngineModel.FromModel(SyntheticLlama.Create(config)), slots, maxSequenceLength));
    }

    /// <summary>A random adapter of <paramref name="config"/> for the host's base (built on the model thread; the caller disposes it).</summary>
    public static Task<AdapterDefinition> CreateRandomAdapterAsync(EngineHost host, AdapterConfig config, int seed) =>
        host.RunOnDeviceAsync(backend => SyntheticAdapters.Create(
            (backend.Model ?? throw new InvalidOperationException("random adapters need a real model")).View, config, seed));

    /// <summary>Decodes ids outside the tokenizer's vocabulary as nothing (a synthetic model may generate them).</summary>
    private sealed class ClampedTokenizer(ITextTokenizer inner) : ITextTokenizer
    {
        public int VocabSize => inner.VocabSize;
        public int? BosTokenId => inner.BosTokenId;
        public int? EosTokenId => inner.EosTokenId;
        public IReadOnlyList<int> Encode(string text, bool addSpecialTokens) => inner.Encode(text, addSpecialTokens);
        public string Decode(IEnumerable<int> ids, bool skipSpecialTokens = true) => inner.Decode(ids.Where(Known), skipSpecialTokens);
        public IStreamDecoder CreateStreamDecoder(bool skipSpecialTokens = true) => new Stream(inner.CreateStreamDecoder(skipSpecialTokens), this);
        public int? TokenToId(string token) => inner.TokenToId(token);
        private bool Known(int id) => (uint)id < (uint)inner.VocabSize;

        private sealed class Stream(IStreamDecoder inner, ClampedTokenizer owner) : IStreamDecoder
        {
            public string Push(int id) => owner.Known(id) ? inner.Push(id) : "";
            public string Flush() => inner.Flush();
        }
    }
}
