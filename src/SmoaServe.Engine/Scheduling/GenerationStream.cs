using System.Threading.Channels;

namespace SmoaServe.Engine.Scheduling;

/// <summary>The caller's side of a submitted request: its outputs, and a way to stop it early (e.g. a stop string was seen).</summary>
public sealed class GenerationStream
{
    private readonly Channel<GenerationOutput> _channel = Channel.CreateUnbounded<GenerationOutput>(
        new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
    private readonly Action _wake;
    private volatile bool _cancelRequested;

    internal GenerationStream(Action wake) => _wake = wake;

    public ChannelReader<GenerationOutput> Outputs => _channel.Reader;

    /// <summary>Stops generation at the next step; the stream then ends with <see cref="FinishReason.Cancelled"/>.</summary>
    public void Cancel()
    {
        _cancelRequested = true;
        _wake();
    }

    internal bool CancelRequested => _cancelRequested;
    internal void Write(GenerationOutput output) => _channel.Writer.TryWrite(output);
    internal void Complete() => _channel.Writer.TryComplete();
}
