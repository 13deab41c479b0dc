using System.Diagnostics;
using SmoaServe.Training;

namespace SmoaServe.Cli.Commands;

/// <summary>
/// The live progress line of `smoa train` on stderr: step, loss, learning rate, tokens/s and ETA, redrawn in place on a
/// terminal; when stderr is redirected, one line every ~5 % of the run instead.
/// </summary>
internal sealed class TrainingProgress(TextWriter writer, int totalSteps, int startStep)
{
    private const int BarWidth = 24;
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private readonly bool _interactive = ReferenceEquals(writer, Console.Error) && !Console.IsErrorRedirected;
    private readonly int _every = Math.Max(1, totalSteps / 20);
    private long _tokens;
    private double _trainSeconds;
    private int _steps;
    private double _lossSum, _lastLoss;
    private bool _lineOpen;
    private int _lastLength;

    public void Report(StepResult step)
    {
        _tokens += step.Tokens;
        _trainSeconds += step.Seconds;
        _steps++;
        _lossSum += step.Loss;
        _lastLoss = step.Loss;
        double tokensPerSecond = _tokens / Math.Max(1e-9, _trainSeconds);
        double secondsPerStep = _clock.Elapsed.TotalSeconds / _steps;
        var eta = TimeSpan.FromSeconds(secondsPerStep * (totalSteps - step.Step));
        int filled = totalSteps == 0 ? BarWidth : (int)((long)BarWidth * step.Step / totalSteps);
        string line = $"step {step.Step}/{totalSteps} [{new string('#', filled)}{new string('.', BarWidth - filled)}] " +
                      $"epoch {step.Epoch} loss {step.Loss:F4} acc {step.Accuracy:P1} lr {step.LearningRate:E2} " +
                      $"{tokensPerSecond:N0} tok/s ETA {Format(eta)}";
        if (_interactive)
        {
            writer.Write("\r" + line.PadRight(_lastLength));   // pads over a longer previous line
            _lastLength = line.Length;
            _lineOpen = true;
        }
        else if (step.Step % _every == 0 || step.Step == totalSteps || _steps == 1) writer.WriteLine(line);
    }

    /// <summary>A message on its own line (the progress line is redrawn after it).</summary>
    public void Message(string text)
    {
        if (_lineOpen) { writer.WriteLine(); _lineOpen = false; _lastLength = 0; }
        writer.WriteLine(text);
    }

    public void Finish()
    {
        if (_lineOpen) { writer.WriteLine(); _lineOpen = false; }
    }

    public string Summary => _steps == 0
        ? $"no steps left to train (resumed at step {startStep})"
        : $"{_steps} steps in {_clock.Elapsed.TotalSeconds:F1} s, last loss {_lastLoss:F4}, mean loss {_lossSum / _steps:F4}, {_tokens / Math.Max(1e-9, _trainSeconds):N0} tok/s";

    private static string Format(TimeSpan t) => t.TotalHours >= 1 ? $"{(int)t.TotalHours}:{t.Minutes:D2}:{t.Seconds:D2}" : $"{t.Minutes:D2}:{t.Seconds:D2}";
}
