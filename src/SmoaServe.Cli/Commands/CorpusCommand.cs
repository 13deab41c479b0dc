using SmoaServe.Training.Pretraining;

namespace SmoaServe.Cli.Commands;

/// <summary>`smoa corpus`: builds the default model's training corpus from the WordNet database files.</summary>
public sealed class CorpusCommand : ICommand
{
    public string Name => "corpus";
    public string Summary => "build a pretraining corpus (JSONL) from the WordNet 3.0 database files";
    public string Usage =>
        "usage: smoa corpus --wordnet DIR --out corpus.jsonl [--seed S]\n" +
        "       smoa corpus --wordnet DIR --cards N --out train.jsonl [--seed S]\n" +
        "\n" +
        "  --wordnet DIR   the WordNet 3.0 database folder (data.noun, data.verb, data.adj, data.adv, cntlist.rev), e.g.\n" +
        "                  /usr/share/wordnet after `apt-get install wordnet-base`, or the same path inside\n" +
        "                  `apt-get download wordnet-base && dpkg-deb -x wordnet-base_*.deb wn`\n" +
        "  --out FILE      the corpus: {\"text\": ...} documents and {\"messages\": [...]} conversations, one per line\n" +
        "  --cards N       instead: N chat examples answered as dictionary cards (Word / Kind / Meaning / Example lines),\n" +
        "                  fine-tuning data for a style the corpus never shows (adapters/dictionary-card)\n" +
        "  --seed S        phrasing and order (default 1; 7 with --cards); the same files and seed give the same output\n";

    public int Run(string[] args)
    {
        var a = CliArgs.Parse(args, ["wordnet", "out", "seed", "cards"]);
        if (a.Get("cards") is not null)
        {
            int n = WordNetCorpus.BuildCards(a.Required("wordnet"), a.Required("out"), a.GetInt("cards", 0), a.GetInt("seed", 7));
            Console.WriteLine($"{a.Required("out")}: {n} conversations");
            return 0;
        }
        var (texts, chats) = WordNetCorpus.Build(a.Required("wordnet"), a.Required("out"), a.GetInt("seed", 1));
        Console.WriteLine($"{a.Required("out")}: {texts} documents, {chats} conversations");
        return 0;
    }
}
