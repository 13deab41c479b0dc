using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json.Nodes;
using Xunit.Abstractions;

namespace SmoaServe.Cli.Tests;

/// <summary>
/// A fine-tuning job survives kill -9 of a real `smoa serve` process: after the restart on the same data directory the
/// job, found running, resumes from its last checkpoint and succeeds; its adapter then answers the code words.
/// </summary>
public sealed class FineTuningRestartTests(ITestOutputHelper output) : IDisposable
{
    private static readonly string[] Words =
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen"];

    private readonly string _data = Path.Combine(Path.GetTempPath(), "smoa-ft-restart-" + Guid.NewGuid().ToString("N"));
    private static readonly Dictionary<string, string> Settings = new() { ["Smoa__FineTuneCheckpointSteps"] = "10" };

    public void Dispose()
    {
        if (Directory.Exists(_data)) Directory.Delete(_data, true);
    }

    [Fact]
    public async Task Kill_9_mid_job_then_restart_resumes_from_the_checkpoint_and_succeeds()
    {
        string key, jobId;
        int checkpointStep;
        await using (var first = await ServeProcess.StartAsync(_data, Settings))
        {
            var api = new TenantApi(first.Http);
            (_, key) = await api.CreateTenant(ServeProcess.AdminKey, "durable");
            string lines = string.Join("\n", Enumerable.Range(0, 16).Select(i =>
                $"{{\"messages\": [{{\"role\": \"user\", \"content\": \"code {i}\"}}, {{\"role\": \"assistant\", \"content\": \"{Words[i]}\"}}]}}"));
            var form = new MultipartFormDataContent { { new StringContent("fine-tune"), "purpose" } };
            form.Add(new ByteArrayContent(Encoding.UTF8.GetBytes(lines)), "file", "codes.jsonl");
            var file = await api.Send(HttpMethod.Post, "/v1/files", key, form);
            Assert.True(file.Status == HttpStatusCode.OK, file.Text);
            var job = await api.Json(HttpMethod.Post, "/v1/fine_tuning/jobs", ServeProcess.AdminKey, new
            {
                model = "llama-a", training_file = (string)file.Body!["id"]!, tenant = "durable", seed = 7, suffix = "codes",
                method = new
                {
                    type = "smoa",
                    smoa = new { hyperparameters = new { n_epochs = 120, batch_size = 16, learning_rate = 0.1, r = 8, num_blocks = 2, lora_alpha = 16, warmup_ratio = 0.05 } },
                },
            });
            Assert.True(job.Status == HttpStatusCode.OK, job.Text);
            jobId = (string)job.Body!["id"]!;

            // kill -9 once the first checkpoint is written, mid-job
            var deadline = DateTime.UtcNow.AddSeconds(90);
            while (true)
            {
                var cps = await api.Send(HttpMethod.Get, $"/v1/fine_tuning/jobs/{jobId}/checkpoints", ServeProcess.AdminKey);
                if (cps.Body!["data"]!.AsArray().Count > 0)
                {
                    checkpointStep = (int)cps.Body["data"]![0]!["step_number"]!;
                    break;
                }
                Assert.True(DateTime.UtcNow < deadline, "no checkpoint was written: " + first.Output);
                await Task.Delay(20);
            }
            await first.KillAsync();
        }

        await using var second = await ServeProcess.StartAsync(_data, Settings);
        var again = new TenantApi(second.Http);
        JsonNode final;
        var until = DateTime.UtcNow.AddSeconds(180);
        while (true)
        {
            final = (await again.Send(HttpMethod.Get, $"/v1/fine_tuning/jobs/{jobId}", ServeProcess.AdminKey)).Body!;
            if ((string)final["status"]! is "succeeded" or "failed" or "cancelled") break;
            Assert.True(DateTime.UtcNow < until, "the job did not finish: " + final.ToJsonString());
            await Task.Delay(100);
        }
        var events = new List<string>();
        for (string? after = null; ;)
        {
            var page = (await again.Send(HttpMethod.Get, $"/v1/fine_tuning/jobs/{jobId}/events?limit=100" + (after is null ? "" : "&after=" + after), ServeProcess.AdminKey)).Body!;
            events.AddRange(page["data"]!.AsArray().Select(e => (string)e!["message"]!));
            if (!(bool)page["has_more"]!) break;
            after = (string)page["last_id"]!;
        }
        output.WriteLine($"killed after the checkpoint at step {checkpointStep}; {final["status"]}; " + string.Join(" | ", events.Where(e => !e.StartsWith("Step "))));
        Assert.True((string?)final["status"] == "succeeded", final.ToJsonString());
        Assert.Contains(events, e => e.Contains("resumes from its last checkpoint"));
        Assert.Contains(events, e => e.Contains($"Resumed from the checkpoint at step {checkpointStep}"));
        Assert.True(checkpointStep < 120);

        string adapter = (string)final["fine_tuned_model"]!;
        int correct = 0;
        for (int i = 0; i < 16; i++)
        {
            var r = await again.Json(HttpMethod.Post, "/v1/chat/completions", key, new
            {
                model = adapter, messages = new[] { new { role = "user", content = $"code {i}" } }, max_tokens = 8, temperature = 0,
            });
            if (((string?)r.Body!["choices"]![0]!["message"]!["content"])?.Trim() == Words[i]) correct++;
        }
        Assert.True(correct >= 14, $"the resumed job's adapter answered {correct} of 16");
    }
}
