using SmoaServe.Engine.Adapters;
using SmoaServe.Engine.Model;
using SmoaServe.Engine.Runner;
using SmoaServe.Text;

namespace SmoaServe.Server;

/// <summary>
/// A random-weight Llama (<see cref="SyntheticLlama"/>) with N random adapters named syn-0..syn-{N-1}, for load tests
/// where a step costs real compute. Text goes through a real checkpoint's tokenizer; the synthetic vocabulary must
/// cover it (generated ids beyond the tokenizer decode as nothing).
/// </summary>
public static class SyntheticModel
{
    public static ModelSpec Create(string spec, string tokenizerDir, AdapterConfig adapterConfig, int adapterCount, int slots, int maxLen)
    {
        var config = SyntheticLlama.ParseSpec(spec);
        var tokenizer = TokenizerLoader.Load(tokenizerDir);
        if (config.VocabSize < tokenizer.VocabSize)
            throw new ArgumentException($"synthetic vocab {config.VocabSize} is smaller than the tokenizer's {tokenizer.VocabSize}");
        var names = Enumerable.Range(0, adapterCount).Select(i => $"syn-{i}").ToList();
        return new ModelSpec
        {
            Tokenizer = new ClampedTokenizer(tokenizer),
            EosTokenIds = new HashSet<int>(),
            BuiltInAdapters = names,
            CreateBackend = () => new Backend(SyntheticLlama.Create(config), adapterConfig, names, slots, maxLen),
        };
    }

    private sealed class Backend : IModelBackend
    {
        private readonly LlamaModel _model;
        private readonly AdapterRegistry _registry;
        private readonly ModelRunner _runner;

        public Backend(LlamaModel model, AdapterConfig adapterConfig, IReadOnlyList<string> names, int slots, int maxLen)
        {
            _model = model;
            var view = BaseModelView.From(model);
            _registry = new AdapterRegistry(view);
            for (int i = 0; i < names.Count; i++)
            {
                using var definition = SyntheticAdapters.Create(view, adapterConfig, seed: 1000 + i);
                _registry.Add(names[i], definition);
            }
            _runner = new ModelRunner(model, slots, maxLen, _registry);
        }

        public IModelRunner Runner => _runner;
        public void LoadAdapter(string name, string directory) => _registry.Load(name, directory);
        public bool RemoveAdapter(string name) => _registry.Remove(name);
        public void Dispose() { _runner.Dispose(); _registry.Dispose(); _model.Dispose(); }
    }

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
