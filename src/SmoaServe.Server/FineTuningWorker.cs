using System.Collections.Concurrent;
using System.Diagnostics;
using Microsoft.Extensions.Options;
using SmoaServe.Engine.Adapters;
using SmoaServe.Engine.Hosting;
using SmoaServe.Engine.Model;
using SmoaServe.Platform.Adapters;
using SmoaServe.Platform.FineTuning;
using SmoaServe.Training;
using SmoaServe.Training.Adapters;
using SmoaServe.Training.Data;

namespace SmoaServe.Server;

/// <summary>
/// Runs fine-tuning jobs, one at a time, in the serving process. A job's files are validated line by line
/// (validating_files → queued), then it trains (running) on the served base: each micro-batch of an optimizer step is one work item on the
/// model thread, between two scheduler steps, so decoding goes on while a job runs, and while requests are in flight the job leaves the model thread to them for
/// part of the time (<see cref="ServerOptions.FineTuneServingShare"/>). Every
/// <see cref="ServerOptions.FineTuneCheckpointSteps"/> steps the training state is captured there and written off it
/// (temp + fsync + rename); after a crash or restart a job found running resumes from its last checkpoint, or from its
/// first step when none was written, and a checkpoint that cannot be used fails the job with a reason. On success the
/// adapter goes through the upload path into the job's namespace and is servable at once.
/// </summary>
public sealed class FineTuningWorker(FineTuningService jobs, EngineHost engine, AdapterService adapters, IOptions<ServerOptions> serverOptions,
    IOptions<EngineOptions> engineOptions, ServerStatus status, ILogger<FineTuningWorker> log) : BackgroundService
{
    private readonly ServerOptions _options = serverOptions.Value;
    private readonly ConcurrentDictionary<string, (List<TokenizedExample> Train, List<TokenizedExample>? Valid)> _validated = new();

    /// <summary>Where a job's training state lives: &lt;data&gt;/fine_tuning/&lt;job id&gt;/state.safetensors.</summary>
    public string CheckpointPath(string jobId) => Path.Combine(engineOptions.Value.DataDirectory, "fine_tuning", jobId, "state.safetensors");

    protected override async Task ExecuteAsync(CancellationToken stopping)
    {
        try { await status.Loaded.WaitAsync(stopping); }
        catch (Exception) { return; }
        Recover();
        while (!stopping.IsCancellationRequested)
        {
            try
            {
                if (jobs.Store.JobsIn(JobStatus.ValidatingFiles).FirstOrDefault() is { } toValidate) await ValidateAsync(toValidate, stopping);
                else if (jobs.Store.JobsIn(JobStatus.Queued).FirstOrDefault() is { } queued) await RunAsync(queued, stopping);
                else await jobs.WaitForWorkAsync(TimeSpan.FromSeconds(5), stopping);
            }
            catch (OperationCanceledException) when (stopping.IsCancellationRequested) { return; }
            catch (Exception e)
            {
                log.LogError(e, "fine-tuning worker error");
                await Task.Delay(1000, stopping);
            }
        }
    }

    /// <summary>Jobs the previous process left running go back to the queue (they resume from their checkpoint); partial uploads are deleted.</summary>
    private void Recover()
    {
        jobs.Files.Reconcile(jobs.Store.ListFiles(null, null, 10_000_000).Items.Select(f => f.Path),
            System.Diagnostics.Process.GetCurrentProcess().StartTime.ToUniversalTime());
        foreach (var job in jobs.Store.JobsIn(JobStatus.Running))
        {
            bool resumable = File.Exists(CheckpointPath(job.Id));
            jobs.Update(job.Id, j => j with { Status = JobStatus.Queued });
            jobs.AddMessage(job.Id, "warn", resumable
                ? "The server restarted while the job was running; it resumes from its last checkpoint."
                : "The server restarted while the job was running, before its first checkpoint; it starts again from step 0.");
        }
    }

    private async Task ValidateAsync(FineTuningJob job, CancellationToken stopping)
    {
        jobs.AddMessage(job.Id, "info", "Validating training file: " + job.TrainingFile);
        var data = await Task.Run(() => Validate(job), stopping);
        if (data is null) return;
        _validated[job.Id] = data.Value;
        if (jobs.Update(job.Id, j => j with { Status = JobStatus.Queued }) is not null)
            jobs.AddMessage(job.Id, "info", $"Files validated: {data.Value.Train.Count} training conversations" +
                (data.Value.Valid is { } v ? $", {v.Count} validation conversations" : "") + ". The job is queued.");
        else _validated.TryRemove(job.Id, out _);
    }

    /// <summary>Tokenizes the job's files with the served chat template; a bad line fails the job with an error naming it.</summary>
    private (List<TokenizedExample> Train, List<TokenizedExample>? Valid)? Validate(FineTuningJob job)
    {
        var template = engine.ChatTemplate;
        if (template is null) { Fail(job.Id, "unsupported_model", "The base model has no chat template to render the conversations with.", "model"); return null; }
        var dataset = new ChatDataset(engine.Tokenizer, template, new ChatDataOptions { MaxSequenceLength = MaxSequenceLength });
        List<TokenizedExample> Load(string fileId, string param)
        {
            var file = jobs.Store.GetFile(fileId) ?? throw new JobFailure("file_not_found", $"The file '{fileId}' no longer exists.", param);
            try
            {
                return JsonlValidation.Load(file.Path, fileId, dataset, _options.FineTuneMaxLineChars, _options.FineTuneMaxLines,
                    w => jobs.AddMessage(job.Id, "warn", w));
            }
            catch (InvalidDataException e) { throw new JobFailure("invalid_" + param, e.Message, param); }
            catch (IOException e) { throw new JobFailure("file_unreadable", $"The file '{fileId}' could not be read: {e.Message}", param); }
        }
        try
        {
            var train = Load(job.TrainingFile, "training_file");
            var valid = job.ValidationFile is { } v ? Load(v, "validation_file") : null;
            return (train, valid);
        }
        catch (JobFailure f)
        {
            Fail(job.Id, f.Code, f.Message, f.Param);
            return null;
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            log.LogError(e, "validating the files of {Job} failed", job.Id);
            Fail(job.Id, "validation_error", "The files could not be validated: " + e.Message, "training_file");
            return null;
        }
    }

    private int MaxSequenceLength => Math.Min(_options.FineTuneMaxSequenceLength, engine.MaxSequenceLength);

    private async Task RunAsync(FineTuningJob job, CancellationToken stopping)
    {
        if (!_validated.TryRemove(job.Id, out var data))
        {
            // validated before a restart: the tokens are not kept, so the files are read again
            if (await Task.Run(() => Validate(job), stopping) is not { } again) return;
            data = again;
        }
        var cancel = jobs.CancellationOf(job.Id);
        try
        {
            if (jobs.Update(job.Id, j => j with { Status = JobStatus.Running }) is not { } running) return;
            await TrainAsync(running, data.Train, data.Valid, cancel, stopping);
        }
        catch (JobFailure f) { Fail(job.Id, f.Code, f.Message, f.Param); }
        catch (OperationCanceledException) when (stopping.IsCancellationRequested) { throw; }
        catch (Exception e)
        {
            log.LogError(e, "fine-tuning job {Job} failed", job.Id);
            Fail(job.Id, "training_error", "Training failed: " + e.Message, null);
        }
        finally { jobs.ReleaseCancellation(job.Id); }
    }

    private async Task TrainAsync(FineTuningJob job, List<TokenizedExample> train, List<TokenizedExample>? valid, CancellationToken cancel, CancellationToken stopping)
    {
        var h = job.Hyperparameters;
        var targets = h.TargetModules.Select(t => ProjectionNames.TryParse(t, out var p) ? p : throw new JobFailure("invalid_hyperparameters", $"unknown target module '{t}'", "method")).ToList();
        var config = job.Method == "smoa" ? AdapterConfig.Smoa(h.R, h.NumBlocks ?? 2, h.LoraAlpha, targets) : AdapterConfig.Lora(h.R, h.LoraAlpha, targets);
        var options = new TrainingOptions
        {
            Epochs = h.NEpochs, BatchSize = h.BatchSize, MicroBatchSize = Math.Min(h.BatchSize, _options.FineTuneMicroBatchSize), LearningRate = h.LearningRate,
            WarmupRatio = h.WarmupRatio, WeightDecay = h.WeightDecay, MaxGradNorm = h.MaxGradNorm, Seed = unchecked((ulong)job.Seed),
        };
        var trainingData = new TrainingData(train, MaxSequenceLength);
        string checkpoint = CheckpointPath(job.Id);
        var session = await engine.RunOnDeviceAsync(backend =>
        {
            var model = backend.Model ?? throw new JobFailure("unsupported_model", "This server's engine has no model to train on.", "model");
            var adapter = TrainableAdapter.Create(model.Model, config, options.Seed, config.Kind == AdapterKind.Smoa ? model.Layouts : null);
            Trainer? trainer = null;
            try
            {
                trainer = new Trainer(model.Model, adapter, options, trainingData);
                if (File.Exists(checkpoint))
                {
                    try { trainer.LoadCheckpoint(checkpoint); }
                    catch (Exception e) when (e is InvalidDataException or IOException or ArgumentException)
                    {
                        throw new JobFailure("checkpoint_unusable", "The job's checkpoint could not be resumed: " + e.Message.Replace(checkpoint, "the checkpoint"), null);
                    }
                }
                return (Adapter: adapter, Trainer: trainer);
            }
            catch
            {
                trainer?.Dispose();
                adapter.Dispose();
                throw;
            }
        });
        var (trainable, trainer) = session;
        try
        {
            long tokens = 0;
            if (trainer.CompletedSteps > 0)
            {
                tokens = jobs.Store.ListCheckpoints(job.Id, null, 1).Items.FirstOrDefault() is { } last && last.Step == trainer.CompletedSteps
                    ? TokensOf(last) : 0;
                jobs.AddMessage(job.Id, "info", $"Resumed from the checkpoint at step {trainer.CompletedSteps} of {trainer.TotalSteps}.");
            }
            else jobs.AddMessage(job.Id, "info", $"Fine-tuning job started: {trainer.TotalSteps} steps ({job.Method}, {trainable.ParameterCount:N0} trainable parameters).");
            jobs.Update(job.Id, j => j with { TotalSteps = trainer.TotalSteps, CompletedSteps = trainer.CompletedSteps });

            int every = Math.Max(1, trainer.TotalSteps / Math.Max(1, _options.FineTuneMetricsEvents));
            var clock = Stopwatch.StartNew();
            int startStep = trainer.CompletedSteps;
            while (!trainer.Finished)
            {
                if (cancel.IsCancellationRequested) break;
                stopping.ThrowIfCancellationRequested();   // left running: resumed from its checkpoint at the next start
                var step = await StepInSlicesAsync(trainer, stopping);
                tokens += step.Tokens;
                bool checkpointNow = step.Step % _options.FineTuneCheckpointSteps == 0 && !trainer.Finished;
                bool report = step.Step % every == 0 || trainer.Finished || checkpointNow;
                if (!report) continue;

                double? validLoss = null;
                if (valid is not null && (checkpointNow || trainer.Finished))
                    validLoss = (await engine.RunOnDeviceAsync(_ => trainer.Evaluate(valid))).Loss;
                var metrics = new Dictionary<string, object?>
                {
                    ["step"] = step.Step, ["total_steps"] = step.TotalSteps, ["epoch"] = step.Epoch, ["train_loss"] = Round(step.Loss),
                    ["train_mean_token_accuracy"] = Round(step.Accuracy), ["valid_loss"] = validLoss is { } vl ? Round(vl) : null,
                    ["learning_rate"] = step.LearningRate, ["grad_norm"] = Round(step.GradNorm),
                    ["tokens_per_s"] = Math.Round(step.Seconds > 0 ? step.Tokens / step.Seconds : 0, 1), ["trained_tokens"] = tokens,
                };
                jobs.AddMetrics(job.Id, $"Step {step.Step}/{step.TotalSteps}: training loss={step.Loss:F4}" + (validLoss is { } v2 ? $", validation loss={v2:F4}" : ""), metrics);
                double perStep = clock.Elapsed.TotalSeconds / Math.Max(1, trainer.CompletedSteps - startStep);
                var estimate = DateTimeOffset.UtcNow.AddSeconds(perStep * (trainer.TotalSteps - trainer.CompletedSteps));
                if (jobs.Update(job.Id, j => j with { CompletedSteps = step.Step, TrainedTokens = tokens, EstimatedFinish = estimate }) is null) return;

                if (checkpointNow)
                {
                    using var state = await engine.RunOnDeviceAsync(_ => trainer.CaptureCheckpoint());
                    await Task.Run(() => state.Write(checkpoint), CancellationToken.None);
                    jobs.Store.AddCheckpoint(new JobCheckpoint(FineTuningIds.New("ftckpt"), job.Id, DateTimeOffset.UtcNow, step.Step,
                        System.Text.Json.JsonSerializer.Serialize(metrics)));
                }
            }

            if (cancel.IsCancellationRequested && !trainer.Finished)
            {
                jobs.Update(job.Id, j => j with { Status = JobStatus.Cancelled, FinishedAt = Now(), EstimatedFinish = null, TrainedTokens = tokens });
                jobs.AddMessage(job.Id, "info", $"The job was cancelled after step {trainer.CompletedSteps}.");
                DeleteState(job.Id);
                return;
            }
            await PublishAsync(job, trainable, tokens);
        }
        finally
        {
            try
            {
                await engine.RunOnDeviceAsync(_ =>
                {
                    trainer.Dispose();
                    trainable.Dispose();
                    return true;
                });
            }
            catch (InvalidOperationException) { /* the engine is shut down; its tensors go with the process */ }
        }
    }

    /// <summary>
    /// One optimizer step, one micro-batch per model-thread work item (decode steps run between them); the update in a
    /// last item. A step abandoned by an error leaves nothing behind: the next step clears the gradients.
    /// </summary>
    private async Task<StepResult> StepInSlicesAsync(Trainer trainer, CancellationToken stopping)
    {
        var pieces = await engine.RunOnDeviceAsync(_ =>
        {
            var p = trainer.BeginStep();
            trainer.StepPiece(p);
            return p;
        });
        try
        {
            double before = 0;
            while (!pieces.Done)
            {
                await YieldToServingAsync(pieces.Seconds - before, stopping);
                before = pieces.Seconds;
                await engine.RunOnDeviceAsync(_ => { trainer.StepPiece(pieces); return true; });
            }
            var step = await engine.RunOnDeviceAsync(_ => trainer.FinishStep(pieces));
            await YieldToServingAsync(step.Seconds - before, stopping);
            return step;
        }
        finally { pieces.Dispose(); }
    }

    /// <summary>While requests are in flight, leaves the model thread to them for a while after each piece of training
    /// work of <paramref name="stepSeconds"/> (<see cref="ServerOptions.FineTuneServingShare"/>).</summary>
    private async Task YieldToServingAsync(double stepSeconds, CancellationToken stopping)
    {
        double share = _options.FineTuneServingShare;
        if (share >= 1 || engine.Scheduler.InFlight == 0) return;
        await Task.Delay(TimeSpan.FromSeconds(Math.Min(stepSeconds * (1 - share) / share, 10)), stopping);
    }

    /// <summary>Writes the adapter into a staging folder and stores it through the upload path (validated, catalogued, registered).</summary>
    private async Task PublishAsync(FineTuningJob job, TrainableAdapter trainable, long tokens)
    {
        var files = adapters.Files ?? throw new InvalidOperationException("no adapter store");
        string name = AdapterNameFor(job);
        using var definition = await engine.RunOnDeviceAsync(_ => trainable.ToDefinition());
        string staging = files.CreateStaging();
        await Task.Run(() => AdapterWriter.Write(staging, definition));
        AdapterRecord record;
        try { record = await adapters.UploadAsync(job.Owner, name, staging); }
        catch (AdapterExistsException) { throw new JobFailure("adapter_exists", $"An adapter named '{name}' already exists in the job's namespace.", "suffix"); }
        catch (InvalidAdapterException e) { throw new JobFailure("invalid_adapter", "The trained adapter was refused: " + e.Message, null); }
        if (jobs.Update(job.Id, j => j with
            {
                Status = JobStatus.Succeeded, FinishedAt = Now(), FineTunedModel = record.Name, TrainedTokens = tokens, EstimatedFinish = null,
            }) is null)
        {
            // cancelled in the last moment: the adapter is not kept
            await adapters.RemoveAsync(record.Owner, record.Name);
            return;
        }
        jobs.AddMessage(job.Id, "info", $"New fine-tuned model created: {record.Name}");
        jobs.AddMessage(job.Id, "info", "The job has successfully completed.");
        DeleteState(job.Id);
    }

    /// <summary>"ft-" + the suffix (or the method) + the job id's last 8 digits: unique, and a valid adapter name.</summary>
    public static string AdapterNameFor(FineTuningJob job) => $"ft-{job.Suffix ?? job.Method}-{job.Id[^8..]}";

    private void Fail(string jobId, string code, string message, string? param)
    {
        if (jobs.Update(jobId, j => j with { Status = JobStatus.Failed, FinishedAt = Now(), EstimatedFinish = null, Error = new JobError(code, message, param) }) is null) return;
        jobs.AddMessage(jobId, "error", message);
        DeleteState(jobId);
    }

    private void DeleteState(string jobId)
    {
        try { Directory.Delete(Path.GetDirectoryName(CheckpointPath(jobId))!, recursive: true); }
        catch (DirectoryNotFoundException) { }
        catch (IOException e) { log.LogWarning("could not delete the training state of {Job}: {Message}", jobId, e.Message); }
    }

    private static long TokensOf(JobCheckpoint c)
    {
        using var doc = System.Text.Json.JsonDocument.Parse(c.Metrics);
        return doc.RootElement.TryGetProperty("trained_tokens", out var t) && t.TryGetInt64(out long n) ? n : 0;
    }

    private static double? Round(double v) => double.IsFinite(v) ? Math.Round(v, 6) : null;
    private static DateTimeOffset Now() => DateTimeOffset.FromUnixTimeSeconds(DateTimeOffset.UtcNow.ToUnixTimeSeconds());

    private sealed class JobFailure(string code, string message, string? param) : Exception(message)
    {
        public string Code { get; } = code;
        public string? Param { get; } = param;
    }
}
