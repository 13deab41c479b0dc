using System.Diagnostics;
using SmoaServe.Engine.Generation;
using SmoaServe.Engine.Runner;

namespace SmoaServe.Engine.Scheduling;

/// <summary>
/// Continuous batching over one <see cref="IModelRunner"/>, owned by one dedicated model thread (TorchSharp scopes
/// are per thread; nothing here awaits). Each step: waiting prompts are prefilled in chunks with the token budget the
/// decode rows leave, then every running sequence that has its prompt in the KV cache decodes one token (rows may use
/// different adapters). Sequences join as soon as a slot is free (or their tenant's share frees one) and leave as soon
/// as they finish or are cancelled, so the batch changes at every step.
/// </summary>
public sealed class Scheduler : IDisposable
{
    private readonly Func<IModelRunner> _createRunner;
    private readonly SchedulerOptions _options;
    private readonly ISchedulerMetrics? _metrics;
    private readonly IAdapterGate? _gate;
    private readonly Dictionary<string, int> _waitingByOwner = new(StringComparer.Ordinal); // guarded by _waiting
    private long _arrivals;     // guarded by _waiting
    private long _admissions;   // model thread only
    private long _preemptions;  // model thread only
    private readonly Thread _thread;
    private readonly AutoResetEvent _wake = new(false);
    private readonly TaskCompletionSource _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly LinkedList<Sequence> _waiting = new();    // guarded by _waiting
    private readonly Queue<(Action<IModelRunner> Run, Action<Exception> Fail)> _work = new(); // guarded by _work
    private readonly List<Sequence> _running = new();           // model thread only
    private readonly Stack<int> _freeSlots = new();             // model thread only
    private IModelRunner? _runner;
    private volatile bool _stopping;
    private bool _closed; // no more submissions or work items; set under both locks
    private int _freeSlotCount; // mirrors _freeSlots.Count for Submit; decremented under _waiting when a request is taken
    private int _maxRunning;

    /// <param name="gate">asked before a request on an adapter is admitted (residency: load on first use, no eviction
    /// under running rows); null = the runner's adapters are all there is</param>
    public Scheduler(Func<IModelRunner> createRunner, SchedulerOptions options, ISchedulerMetrics? metrics = null, IAdapterGate? gate = null)
    {
        options.Validate();
        _createRunner = createRunner;
        _options = options;
        _metrics = metrics;
        _gate = gate;
        _thread = new Thread(RunLoop) { IsBackground = true, Name = "smoa-model" };
        _thread.Start();
    }

    /// <summary>Completes once the runner is created on the model thread (faults with the creation error).</summary>
    public Task Ready => _ready.Task;
    public int VocabSize { get; private set; }
    public int MaxSequenceLength { get; private set; }
    public int MaxRunning => _maxRunning;
    public int QueueDepth { get { lock (_waiting) return _waiting.Count; } }
    /// <summary>Running batch size as of the last step.</summary>
    public int RunningCount { get; private set; }
    /// <summary>Largest decode batch so far (rows in one step).</summary>
    public int PeakDecodeRows { get; private set; }
    /// <summary>Requests queued or running.</summary>
    public int InFlight => Volatile.Read(ref _inFlight);
    private int _inFlight;
    /// <summary>Rows, queue and adapters as of the last step (any thread).</summary>
    public SchedulerSnapshot Snapshot { get; private set; } = SchedulerSnapshot.Empty;
    /// <summary>Rows preempted so far to give another owner its share of the batch.</summary>
    public long Preemptions => Interlocked.Read(ref _preemptions);
    /// <summary>Set when the model loop died (a bug or a runner failure outside a step); nothing runs any more.</summary>
    public Exception? Fault { get; private set; }

    /// <summary>
    /// Queues a request. Throws <see cref="QueueFullException"/> when the queue is full, ArgumentException for a
    /// prompt the runner cannot take, InvalidOperationException when not ready or shutting down.
    /// </summary>
    public GenerationStream Submit(GenerationRequest request)
    {
        if (!_ready.Task.IsCompletedSuccessfully) throw new InvalidOperationException("the model is not loaded");
        if (_stopping) throw new InvalidOperationException("the scheduler is shutting down");
        ValidatePrompt(request);
        var seq = new Sequence(request, new GenerationStream(Wake));
        seq.Registration = request.CancellationToken.Register(seq.Stream.Cancel); // before queueing: End disposes it
        lock (_waiting)
        {
            string? refusal = _closed ? "the scheduler is shutting down" : null;
            // requests that a free slot will take at the next step are not waiting for one
            if (refusal is not null || _waiting.Count >= _options.MaxQueued + Volatile.Read(ref _freeSlotCount))
            {
                seq.Registration.Dispose();
                throw refusal is not null ? new InvalidOperationException(refusal) : new QueueFullException(_options.MaxQueued);
            }
            if (_options.MaxQueuedPerOwner is { } perOwner && _waitingByOwner.GetValueOrDefault(seq.Owner) >= perOwner + Volatile.Read(ref _freeSlotCount))
            {
                seq.Registration.Dispose();
                throw new QueueFullException(perOwner, "max_queued_per_tenant",
                    $"this tenant already has {perOwner} requests waiting (limit max_queued_per_tenant); retry later");
            }
            seq.Arrival = ++_arrivals;
            _waiting.AddLast(seq);
            _waitingByOwner[seq.Owner] = _waitingByOwner.GetValueOrDefault(seq.Owner) + 1;
            Interlocked.Increment(ref _inFlight);
        }
        Wake();
        return seq.Stream;
    }

    /// <summary>Runs <paramref name="work"/> on the model thread between two steps (e.g. loading an adapter).</summary>
    public Task<T> RunOnModelThread<T>(Func<IModelRunner, T> work)
    {
        var tcs = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_work)
        {
            if (_closed) { tcs.SetException(new InvalidOperationException("the scheduler is shut down")); return tcs.Task; }
            _work.Enqueue((runner =>
            {
                try { tcs.SetResult(work(runner)); }
                catch (Exception e) { tcs.SetException(e); }
            }, e => tcs.TrySetException(e)));
        }
        Wake();
        return tcs.Task;
    }

    public Task RunOnModelThread(Action<IModelRunner> work) => RunOnModelThread<bool>(r => { work(r); return true; });

    private void ValidatePrompt(GenerationRequest request)
    {
        var ids = request.PromptIds;
        if (ids.Count == 0) throw new ArgumentException("the prompt is empty");
        if (ids.Count >= MaxSequenceLength)
            throw new ArgumentException($"the prompt has {ids.Count} tokens; the model's context is {MaxSequenceLength}");
        for (int i = 0; i < ids.Count; i++)
            if ((uint)ids[i] >= (uint)VocabSize) throw new ArgumentException($"prompt token {ids[i]} at index {i} is outside the vocabulary [0, {VocabSize})");
        if (request.Sampling.MaxTokens < 1) throw new ArgumentException("max tokens must be >= 1");
    }

    private void Wake() => _wake.Set();

    // ---- model thread ----

    private void RunLoop()
    {
        if (!CreateRunner()) return;
        try
        {
            while (!_stopping)
            {
                RunPendingWork();
                ReapCancelled();
                Admit();
                TakeSnapshot();
                if (_running.Count == 0)
                {
                    ReportIdle();
                    _wake.WaitOne(TimeSpan.FromMilliseconds(250));
                    continue;
                }
                Step();
            }
        }
        catch (Exception e)
        {
            Fault = e;
            _stopping = true;
            FailAll("scheduler failure: " + e.Message);
        }
        finally
        {
            ShutDown();
        }
    }

    private bool CreateRunner()
    {
        try
        {
            _runner = _createRunner();
            VocabSize = _runner.VocabSize;
            MaxSequenceLength = _runner.MaxSequenceLength;
            _maxRunning = Math.Min(_options.MaxRunning ?? _runner.SlotCount, _runner.SlotCount);
            if (_maxRunning < 1) throw new InvalidOperationException($"the runner has {_runner.SlotCount} KV slots");
            for (int s = _maxRunning - 1; s >= 0; s--) _freeSlots.Push(s);
            Volatile.Write(ref _freeSlotCount, _maxRunning);
            _ready.SetResult();
            return true;
        }
        catch (Exception e)
        {
            _ready.TrySetException(e);
            _stopping = true;
            Close();
            FailWork(new InvalidOperationException("the model failed to load: " + e.Message, e));
            return false;
        }
    }

    /// <summary>Runs the work queued before this call (work queued meanwhile, e.g. an adapter's next device copy, waits
    /// for the next step, so a long sequence of work items never holds the running sequences back).</summary>
    private void RunPendingWork()
    {
        int pending;
        lock (_work) pending = _work.Count;
        for (; pending > 0; pending--)
        {
            Action<IModelRunner> run;
            lock (_work)
            {
                if (_work.Count == 0) return;
                run = _work.Dequeue().Run;
            }
            run(_runner!);
        }
    }

    /// <summary>
    /// Cancelled sequences leave the batch (slot freed) or the queue before the next step; so do running sequences
    /// whose adapter was unloaded (by work run between steps), so one removal never fails the other rows' step.
    /// </summary>
    private void ReapCancelled()
    {
        for (int i = _running.Count - 1; i >= 0; i--)
        {
            var seq = _running[i];
            if (seq.Stream.CancelRequested) Finish(seq, FinishReason.Cancelled);
            else if (seq.Request.AdapterId is not null && !_runner!.HasAdapter(seq.Request.AdapterId))
                Finish(seq, FinishReason.Error, $"adapter '{seq.Request.AdapterId}' was unloaded");
        }
        List<Sequence>? dropped = null;
        lock (_waiting)
        {
            for (var node = _waiting.First; node is not null;)
            {
                var next = node.Next;
                if (node.Value.Stream.CancelRequested) { RemoveWaiting(node); (dropped ??= new()).Add(node.Value); }
                node = next;
            }
        }
        if (dropped is not null) foreach (var s in dropped) End(s, FinishReason.Cancelled);
    }

    /// <summary>
    /// Moves waiting requests into free slots. Requests whose adapter is still loading stay queued without holding
    /// anyone up. With fair sharing the owner with the fewest running rows goes first, and an owner below its share of
    /// the batch may take the slot of the newest row of the owner furthest above it; otherwise first come, first served.
    /// </summary>
    private void Admit()
    {
        while (AdmitOne()) { }
    }

    /// <summary>Admits (or ends, when its adapter is gone) one waiting request; false when nothing more can move.</summary>
    private bool AdmitOne()
    {
        List<Sequence> waiting;
        lock (_waiting)
        {
            if (_waiting.Count == 0) return false;
            waiting = _waiting.ToList();
        }
        bool haveSlot = _freeSlots.Count > 0;
        if (!haveSlot && !_options.FairShare) return false;
        var running = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var r in _running) running[r.Owner] = running.GetValueOrDefault(r.Owner) + 1;
        // owners in order of fewest running rows, then of their earliest waiting request (GroupBy and OrderBy are stable)
        var owners = _options.FairShare
            ? waiting.GroupBy(w => w.Owner).OrderBy(g => running.GetValueOrDefault(g.Key)).Select(g => (Owner: g.Key, Queue: g.ToList())).ToList()
            : [(Owner: "", Queue: waiting)];
        int activeOwners = owners.Select(o => o.Owner).Union(running.Keys).Count();
        int share = Math.Max(1, _maxRunning / Math.Max(1, activeOwners));
        foreach (var (owner, queue) in owners)
        {
            Sequence? victim = null;
            if (!haveSlot)
            {
                // owners are sorted by running rows: once one is at its share, so are all after it
                if (running.GetValueOrDefault(owner) >= share) return false;
                victim = PreemptionVictim(running, share);
                if (victim is null) return false;
            }
            foreach (var seq in queue)
            {
                var readiness = Readiness(seq, out string? error);
                if (readiness == AdapterReadiness.Loading) continue;
                lock (_waiting) RemoveWaiting(seq);
                if (readiness == AdapterReadiness.Missing)
                {
                    End(seq, FinishReason.Error, error ?? $"adapter '{seq.Request.AdapterId}' is not loaded");
                    return true;
                }
                if (victim is not null) Preempt(victim);
                seq.Slot = _freeSlots.Pop();
                Interlocked.Decrement(ref _freeSlotCount);
                if (seq.Request.AdapterId is { } id && _gate is not null) { _gate.Acquire(id); seq.HoldsAdapter = true; }
                seq.PrefillTarget = seq.Resumed ? seq.Tokens.Count - 1 : seq.PromptLength;
                seq.Admission = ++_admissions;
                _running.Add(seq);
                return true;
            }
        }
        return false;
    }

    private AdapterReadiness Readiness(Sequence seq, out string? error)
    {
        error = null;
        if (seq.Request.AdapterId is not { } id) return AdapterReadiness.Ready;
        if (_gate is not null) return _gate.Prepare(id, out error);
        return _runner!.HasAdapter(id) ? AdapterReadiness.Ready : AdapterReadiness.Missing;
    }

    /// <summary>The newest row of the owner with the most running rows, when that owner is above its share.</summary>
    private Sequence? PreemptionVictim(Dictionary<string, int> running, int share)
    {
        var (owner, count) = running.OrderByDescending(kv => kv.Value).FirstOrDefault();
        if (owner is null || count <= share) return null;
        return _running.Where(r => r.Owner == owner).MaxBy(r => r.Admission);
    }

    /// <summary>
    /// Takes a running row out of the batch (its slot freed) and queues it again in its original place. Tokens already
    /// streamed stay; when it is admitted again its context (prompt and generated tokens but the last) is prefilled anew
    /// and decoding continues where it stopped, with the same sampler state.
    /// </summary>
    private void Preempt(Sequence seq)
    {
        _running.Remove(seq);
        try { _runner!.FreeSlot(seq.Slot); }
        catch (Exception e)
        {
            // a slot that cannot be freed cannot be reused: the row ends instead
            _running.Add(seq);
            Finish(seq, FinishReason.Error, "freeing the KV slot failed: " + e.Message);
            return;
        }
        _freeSlots.Push(seq.Slot);
        Interlocked.Increment(ref _freeSlotCount);
        ReleaseAdapter(seq);
        seq.Slot = -1;
        seq.Prefilled = 0;
        seq.Resumed = seq.Generated > 0;
        Interlocked.Increment(ref _preemptions);
        lock (_waiting)
        {
            var node = _waiting.First;
            while (node is not null && node.Value.Arrival < seq.Arrival) node = node.Next;
            if (node is null) _waiting.AddLast(seq); else _waiting.AddBefore(node, seq);
            _waitingByOwner[seq.Owner] = _waitingByOwner.GetValueOrDefault(seq.Owner) + 1;
        }
    }

    /// <summary>Unlinks a waiting sequence (caller holds the _waiting lock).</summary>
    private void RemoveWaiting(Sequence seq)
    {
        var node = _waiting.Find(seq);
        if (node is not null) RemoveWaiting(node);
    }

    private void RemoveWaiting(LinkedListNode<Sequence> node)
    {
        _waiting.Remove(node);
        string owner = node.Value.Owner;
        if (_waitingByOwner.TryGetValue(owner, out int n)) { if (n <= 1) _waitingByOwner.Remove(owner); else _waitingByOwner[owner] = n - 1; }
    }

    private void ReleaseAdapter(Sequence seq)
    {
        if (!seq.HoldsAdapter) return;
        seq.HoldsAdapter = false;
        try { _gate!.Release(seq.Request.AdapterId!); }
        catch (Exception) { /* bookkeeping only; never fails a step */ }
    }

    /// <summary>Prefill chunks within the budget left by the decode rows, then one batched decode for every prefilled sequence.</summary>
    private void Step()
    {
        // rows grouped by adapter: the batch's adapter list then depends only on how many rows use each adapter,
        // so the adapter source's per-batch plans are reused when sequences come and go
        SharePromptPrefills();
        var decoding = _running.Where(s => s.Prefilled == s.PrefillTarget)
            .OrderBy(s => s.Request.AdapterId ?? "", StringComparer.Ordinal).ThenBy(s => s.Slot).ToList();
        // at least one prefill token per step, so prompts progress even when decode rows fill the budget
        int budget = Math.Max(_options.MaxBatchedTokens - decoding.Count, 1);
        int prefillTokens = 0;
        var chunks = new List<(Sequence Seq, int Tokens)>();
        foreach (var seq in _running.Where(s => s.Prefilled < s.PrefillTarget))
        {
            if (budget <= 0) break;
            if (WaitsForGroupPrefill(seq)) continue;
            int n = Math.Min(Math.Min(seq.PrefillTarget - seq.Prefilled, _options.MaxPrefillChunk), budget);
            chunks.Add((seq, n));
            budget -= n;
            prefillTokens += n;
        }
        // prefill before decode: a prompt's first token comes out one forward sooner (time to first token, e.g. a tenant
        // just given its share of the batch), while decode rows still get one token per step
        if (chunks.Count > 0) PrefillStep(chunks);
        if (decoding.Count > 0) DecodeStep(decoding);
        RunningCount = _running.Count;
        _metrics?.OnStep(_running.Count, QueueDepth, decoding.Count, prefillTokens);
        TakeSnapshot();
    }

    private void TakeSnapshot()
    {
        List<Sequence> waiting;
        lock (_waiting) waiting = _waiting.ToList();
        Snapshot = new SchedulerSnapshot(_running.Count, waiting.Count, _maxRunning,
            _running.Select(r => r.Request.AdapterId).OfType<string>().Distinct().Order(StringComparer.Ordinal).ToList(),
            waiting.Select(r => r.Request.AdapterId).OfType<string>().Distinct().Order(StringComparer.Ordinal).ToList(),
            _running.GroupBy(r => r.Owner).ToDictionary(g => g.Key, g => g.Count()),
            waiting.GroupBy(r => r.Owner).ToDictionary(g => g.Key, g => g.Count()),
            Interlocked.Read(ref _preemptions));
    }

    private void DecodeStep(List<Sequence> decoding)
    {
        var rows = decoding.Select(s => new DecodeRow(s.Slot, s.LastToken, s.Position, s.Request.AdapterId)).ToList();
        PeakDecodeRows = Math.Max(PeakDecodeRows, rows.Count);
        if (TryDecode(rows, out var logits, out var error))
        {
            for (int i = 0; i < decoding.Count; i++) Accept(decoding[i], logits[i]);
            return;
        }
        if (decoding.Count == 1)
        {
            Finish(decoding[0], FinishReason.Error, "decode failed: " + error);
            return;
        }
        // isolate the failing row(s): a failed step leaves every slot as it was, so each row can be retried alone
        for (int i = 0; i < decoding.Count; i++)
        {
            if (TryDecode([rows[i]], out var one, out var rowError)) Accept(decoding[i], one[0]);
            else Finish(decoding[i], FinishReason.Error, "decode failed: " + rowError);
        }
    }

    private bool TryDecode(IReadOnlyList<DecodeRow> rows, out float[][] logits, out string? error)
    {
        try
        {
            logits = _runner!.Decode(rows);
            if (logits.Length != rows.Count) throw new InvalidOperationException($"the runner returned {logits.Length} rows for {rows.Count}");
            error = null;
            return true;
        }
        catch (Exception e)
        {
            logits = [];
            error = e.Message;
            return false;
        }
    }

    /// <summary>This step's prefill chunks in one batched forward; if that fails, each chunk alone (isolates a bad row).</summary>
    private void PrefillStep(List<(Sequence Seq, int Tokens)> chunks)
    {
        if (chunks.Count > 1)
        {
            float[][] logits;
            try
            {
                logits = _runner!.PrefillBatch(chunks.Select(c => new PrefillRow(c.Seq.Slot, ChunkIds(c.Seq, c.Tokens), c.Seq.Prefilled, c.Seq.Request.AdapterId)).ToList());
                if (logits.Length != chunks.Count) throw new InvalidOperationException($"the runner returned {logits.Length} rows for {chunks.Count}");
            }
            catch (Exception)
            {
                logits = [];
            }
            if (logits.Length == chunks.Count)
            {
                for (int i = 0; i < chunks.Count; i++) Prefilled(chunks[i].Seq, chunks[i].Tokens, logits[i]);
                return;
            }
        }
        foreach (var (seq, n) in chunks) PrefillChunk(seq, n);
    }

    private static int[] ChunkIds(Sequence seq, int n) => seq.Tokens.GetRange(seq.Prefilled, n).ToArray();

    /// <summary>After the last prompt chunk the first token is sampled; a resumed row's last token is already known (it decodes next).</summary>
    private void Prefilled(Sequence seq, int n, float[] logits)
    {
        seq.Prefilled += n;
        if (seq.Prefilled == seq.PrefillTarget && !seq.Resumed)
        {
            if (seq.Request.Group is { } group) { group.Holder = seq; group.PromptLogits = logits; }
            Accept(seq, logits);
        }
    }

    /// <summary>
    /// Rows of a prompt group that have not started their prompt take it from a row whose slot holds it: its KV entries
    /// copied into their slot and their first token sampled from the prompt's last logits (as their own prefill would).
    /// </summary>
    private void SharePromptPrefills()
    {
        foreach (var seq in _running.Where(s => s.Request.Group is not null && s.Prefilled == 0 && !s.Resumed).ToList())
        {
            var group = seq.Request.Group!;
            if (group.Holder is not Sequence holder || holder == seq || group.PromptLogits is null) continue;
            if (holder.Slot < 0 || holder.Prefilled < seq.PromptLength || !_running.Contains(holder)) continue;
            bool copied;
            try { copied = _runner!.CopySlotPrefix(holder.Slot, seq.Slot, seq.PromptLength); }
            catch (Exception) { copied = false; }
            if (!copied) continue;
            seq.Prefilled = seq.PrefillTarget;
            Interlocked.Increment(ref group._copies);
            Accept(seq, group.PromptLogits);
        }
    }

    /// <summary>A group's row waits while an earlier-admitted row of its group is still prefilling the shared prompt.</summary>
    private bool WaitsForGroupPrefill(Sequence seq)
    {
        if (seq.Request.Group is not { } group || seq.Resumed || seq.Prefilled > 0) return false;
        foreach (var r in _running)
            if (r != seq && r.Request.Group == group && !r.Resumed && r.Admission < seq.Admission && r.Prefilled < r.PromptLength) return true;
        return false;
    }

    private void PrefillChunk(Sequence seq, int n)
    {
        float[] logits;
        try
        {
            logits = _runner!.Prefill(seq.Slot, ChunkIds(seq, n), seq.Prefilled, seq.Request.AdapterId);
        }
        catch (Exception e)
        {
            Finish(seq, FinishReason.Error, "prefill failed: " + e.Message);
            return;
        }
        Prefilled(seq, n, logits);
    }

    /// <summary>Samples the next token from a row of logits, emits it, and ends the sequence on a stop id or length.</summary>
    private void Accept(Sequence seq, float[] logits)
    {
        if (seq.Stream.CancelRequested) return; // reaped before the next step
        // a row whose own values overflowed ends alone; its slot is cleared when freed, so no later row sees them
        if (!LogitsCheck.AllFinite(logits))
        {
            Finish(seq, FinishReason.Error, LogitsCheck.NonFiniteMessage);
            return;
        }
        var sampling = seq.Request.Sampling;
        SampledToken sampled;
        try { sampled = seq.Sampler.Next(logits); }
        catch (InvalidOperationException e)
        {
            Finish(seq, FinishReason.Error, e.Message);
            return;
        }
        int token = sampled.TokenId;
        seq.Generated++;
        seq.LastToken = token;
        seq.Tokens.Add(token);
        ReportLatency(seq);
        seq.Stream.Write(GenerationOutput.ForToken(token, sampled.Logprobs));
        if (sampling.StopTokenIds.Contains(token) || seq.Request.Grammar is { IsTerminated: true }) Finish(seq, FinishReason.Stop);
        else if (seq.Generated >= sampling.MaxTokens || seq.PromptLength + seq.Generated >= MaxSequenceLength) Finish(seq, FinishReason.Length);
    }

    private void ReportLatency(Sequence seq)
    {
        long now = Stopwatch.GetTimestamp();
        if (seq.Generated == 1) _metrics?.OnFirstToken(Stopwatch.GetElapsedTime(seq.SubmittedAt, now));
        else _metrics?.OnInterToken(Stopwatch.GetElapsedTime(seq.LastTokenAt, now));
        seq.LastTokenAt = now;
    }

    /// <summary>Ends a running sequence: frees its KV slot and closes its stream.</summary>
    private void Finish(Sequence seq, FinishReason reason, string? error = null)
    {
        if (!_running.Remove(seq)) return;
        try { _runner!.FreeSlot(seq.Slot); }
        catch (Exception e) { error ??= "freeing the KV slot failed: " + e.Message; }
        _freeSlots.Push(seq.Slot);
        Interlocked.Increment(ref _freeSlotCount);
        End(seq, reason, error);
    }

    private void End(Sequence seq, FinishReason reason, string? error = null)
    {
        ReleaseAdapter(seq);
        seq.Registration.Dispose();
        seq.Stream.Write(new GenerationOutput(-1, reason, seq.PromptLength, seq.Generated, error));
        seq.Stream.Complete();
        Interlocked.Decrement(ref _inFlight);
        _metrics?.OnFinished(reason, seq.PromptLength, seq.Generated);
    }

    private void ReportIdle()
    {
        if (RunningCount == 0 && _idleReported && Snapshot.Waiting == QueueDepth) return;
        RunningCount = 0;
        _idleReported = true;
        _metrics?.OnStep(0, QueueDepth, 0, 0);
        TakeSnapshot();
    }
    private bool _idleReported;

    private void FailAll(string message)
    {
        foreach (var s in _running.ToList()) Finish(s, FinishReason.Error, message);
        List<Sequence> waiting;
        lock (_waiting) { waiting = _waiting.ToList(); _waiting.Clear(); _waitingByOwner.Clear(); }
        foreach (var s in waiting) End(s, FinishReason.Error, message);
    }

    private void FailWork(Exception e)
    {
        lock (_work)
            while (_work.Count > 0) _work.Dequeue().Fail(e);
    }

    private void Close()
    {
        lock (_waiting) lock (_work) _closed = true;
    }

    private void ShutDown()
    {
        Close();
        foreach (var s in _running.ToList()) Finish(s, FinishReason.Cancelled, "the server is shutting down");
        List<Sequence> waiting;
        lock (_waiting) { waiting = _waiting.ToList(); _waiting.Clear(); _waitingByOwner.Clear(); }
        foreach (var s in waiting) End(s, FinishReason.Cancelled, "the server is shutting down");
        RunPendingWork();
        try { _runner?.Dispose(); } catch { /* shutting down */ }
        _runner = null;
        FailWork(new ObjectDisposedException(nameof(Scheduler)));
    }

    /// <summary>Cancels everything in flight, stops the model thread and disposes the runner on it.</summary>
    public void Dispose()
    {
        _stopping = true;
        Wake();
        if (Thread.CurrentThread != _thread) _thread.Join();
        _ready.TrySetException(new ObjectDisposedException(nameof(Scheduler)));
    }

    private sealed class Sequence(GenerationRequest request, GenerationStream stream)
    {
        public GenerationRequest Request { get; } = request;
        public GenerationStream Stream { get; } = stream;
        public CancellationTokenRegistration Registration { get; set; }
        /// <summary>Penalties, bias, grammar mask and the draw of step t from (seed + choice index, t): independent of the batch.</summary>
        public SequenceSampler Sampler { get; } = new(request.Sampling, request.PromptIds,
            CounterRng.RowSeed(request.Sampling.Seed ?? CounterRng.NewSeed(), request.ChoiceIndex), request.Grammar);
        public long SubmittedAt { get; } = Stopwatch.GetTimestamp();
        public long LastTokenAt { get; set; }
        public int PromptLength => Request.PromptIds.Count;
        public int Slot { get; set; } = -1;
        /// <summary>Fair-sharing unit: the request's owner ("" = none).</summary>
        public string Owner { get; } = request.Owner ?? "";
        /// <summary>Prompt, then every generated token: what a preempted row prefills again.</summary>
        public List<int> Tokens { get; } = new(request.PromptIds);
        /// <summary>Tokens to prefill since admission: the prompt, or a resumed row's context but its last token.</summary>
        public int PrefillTarget { get; set; }
        /// <summary>Admitted again after a preemption with tokens already generated.</summary>
        public bool Resumed { get; set; }
        public bool HoldsAdapter { get; set; }
        public long Arrival { get; set; }
        public long Admission { get; set; }
        public int Prefilled { get; set; }
        public int Generated { get; set; }
        public int LastToken { get; set; }
        /// <summary>Position at which <see cref="LastToken"/> is fed to the next decode.</summary>
        public int Position => PromptLength + Generated - 1;
    }
}
