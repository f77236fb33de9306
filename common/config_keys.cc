// The key table of the daemon's configuration (config.h says what it drives), and what is
// printed from it: the commented default config and the docs page.
#include <cmath>
#include <cstdint>
#include <sstream>
#include <type_traits>
#include <nlohmann/json.hpp>

#include "common/config.h"
#include "common/precision.h"
#include "common/rule_text.h"

namespace spritediff {

using nlohmann::json;

namespace {

// Row builders: one per type, so each row reads as name, field, default, range, doc.
ConfigKey Text(const char* name, const char* section, std::string AppConfig::*field, const char* value,
               int min_length, const char* doc) {
  ConfigKey k{name, section, field, std::string(value)};
  k.min = min_length;
  k.doc = doc;
  return k;
}
ConfigKey Choice(const char* name, const char* section, std::string AppConfig::*field, const char* value,
                 const char* choices, const char* doc) {
  ConfigKey k{name, section, field, std::string(value)};
  k.choices = choices;
  k.doc = doc;
  return k;
}
ConfigKey BoolOrAuto(const char* name, const char* section, std::string AppConfig::*field, const char* value,
                     const char* doc) {
  ConfigKey k = Choice(name, section, field, value, "true|false|auto", doc);
  k.bool_or_auto = true;
  return k;
}
ConfigKey Int(const char* name, const char* section, int AppConfig::*field, int value, int min, int max,
              const char* unit, const char* doc) {
  ConfigKey k{name, section, field, int64_t{value}, static_cast<double>(min), static_cast<double>(max), unit};
  k.doc = doc;
  return k;
}
ConfigKey Int64(const char* name, const char* section, int64_t AppConfig::*field, int64_t value, int64_t min,
                int64_t max, const char* unit, const char* doc) {
  ConfigKey k{name, section, field, value, static_cast<double>(min), static_cast<double>(max), unit};
  k.doc = doc;
  return k;
}
ConfigKey Number(const char* name, const char* section, double AppConfig::*field, double value, double min,
                 double max, const char* unit, const char* doc) {
  ConfigKey k{name, section, field, value, min, max, unit};
  k.doc = doc;
  return k;
}
ConfigKey Flag(const char* name, const char* section, bool AppConfig::*field, bool value, const char* doc) {
  ConfigKey k{name, section, field, value};
  k.doc = doc;
  return k;
}

constexpr const char* kListen = "Listening";
constexpr const char* kModels = "Models and devices";
constexpr const char* kBatch = "Batching and admission";
constexpr const char* kFrames = "Frames and shutdown";
constexpr const char* kTraining = "Training jobs";
constexpr const char* kSecurity = "Security";
constexpr const char* kConnections = "Connections";
constexpr const char* kMemory = "Memory";

std::vector<ConfigKey> MakeKeys() {
  using C = AppConfig;
  return {
      Text("bind", kListen, &C::bind, "127.0.0.1", 1,
           "gRPC listen address. A non-loopback address needs TLS and a token file unless "
           "allow_insecure_public is true."),
      Int("port", kListen, &C::port, 50051, 0, 65535, "", "gRPC port (0: any free port, named in the start-up line)."),
      Int("metrics_port", kListen, &C::metrics_port, 9464, 0, 65535, "",
          "Prometheus /metrics over HTTP on metrics_bind:metrics_port; 0 = off."),
      Text("metrics_bind", kListen, &C::metrics_bind, "127.0.0.1", 1, "Address of the /metrics HTTP listener."),

      Text("models_dir", kModels, &C::models_dir, "models", 1,
           "Directory of model directories (each with model.json); relative to the working directory."),
      Flag("watch_models_dir", kModels, &C::watch_models_dir, true,
           "Follow models_dir while serving: a complete model directory copied in is loaded, a changed "
           "one swapped in (the old version finishes its requests), a removed one retired; "
           "half-written directories are never loaded (server/model_watcher.h)."),
      Int("models_poll_s", kModels, &C::models_poll_s, 2, 1, 3600, "s",
          "With watch_models_dir, models_dir is also rescanned this often: the fallback for network "
          "volumes, where inotify sees nothing."),
      Text("default_model", kModels, &C::default_model, "sprites16", 0,
           "Model used when a request names none (empty: the first model by name)."),
      Text("device", kModels, &C::device, "auto", 1, "auto (CUDA when there is one), cpu, cuda or cuda:N."),
      Int("threads", kModels, &C::threads, 0, 0, 1024, "threads", "Intra-op CPU threads for serving; 0 = all cores."),
      Choice("precision", kModels, &C::precision, "auto", kPrecisionChoices,
             "Inference precision; auto is bf16 on a CPU with native bf16 (AVX-512 BF16 or AMX), fp32 "
             "elsewhere (CUDA included)."),
      BoolOrAuto("fold_batchnorm", kModels, &C::fold_batchnorm, "auto",
                 "Serve with BatchNorms folded into their convolutions (the same sprites up to float "
                 "rounding); auto folds on a CUDA device only, where it takes 18 kernels from each step "
                 "(on a CPU it measured no steady gain)."),
      Flag("cuda_graphs", kModels, &C::cuda_graphs, true,
           "On a CUDA device, replay each batch size's denoising step as a captured CUDA graph; no "
           "effect on a CPU."),

      Int("max_batch_rows", kBatch, &C::max_batch_rows, 64, 1, 4096, "rows",
          "Rows in one denoising forward (the guidance halves not counted)."),
      Int("cpu_batch_rows", kBatch, &C::cpu_batch_rows, 32, 0, 4096, "rows",
          "On a CPU device, new requests wait once the batch holds this many rows (an empty batch "
          "takes any request); 0 = max_batch_rows."),
      Int("cpu_batch_wait_steps", kBatch, &C::cpu_batch_wait_steps, 4, 0, 100000, "steps",
          "On a CPU with cpu_batch_rows set, a new request waits for a place only if the running "
          "requests free one within this many steps, else it joins up to max_batch_rows (not within 5 s "
          "of a refused request); 0 = always waits."),
      Int("cpu_overload_batch_rows", kBatch, &C::cpu_overload_batch_rows, 12, 0, 4096, "rows",
          "On a CPU, the rows the batch fills to within 5 s of a refused request (overload: faster "
          "steps for the accepted requests); 0 = cpu_batch_rows."),
      Int("max_queued_rows", kBatch, &C::max_queued_rows, 1024, 1, 1 << 20, "rows",
          "Rows waiting for admission; past it, RESOURCE_EXHAUSTED."),
      Int("max_rows_per_request", kBatch, &C::max_rows_per_request, 64, 1, 4096, "rows",
          "Upper bound of SampleRequest.count; at most max_batch_rows and max_queued_rows."),
      Number("max_queue_wait_s", kBatch, &C::max_queue_wait_s, 0.25, 0, 86400, "s",
             "Refuse a request (RESOURCE_EXHAUSTED) whose estimated wait for a place in the batch, from "
             "the steps left ahead of it, is longer; 0 = off."),

      Int("max_frames_per_request", kFrames, &C::max_frames_per_request, 100, 1, 100000, "frames",
          "A finer frame_every is coarsened to stay within this many frames."),
      Int("max_pending_frames", kFrames, &C::max_pending_frames, 4, 1, 1024, "frames",
          "Frames buffered for a slow reader before older ones are dropped."),
      Int("shutdown_grace_s", kFrames, &C::shutdown_grace_s, 10, 0, 3600, "s",
          "On SIGTERM, requests in flight get this long to finish."),

      Text("data_root", kTraining, &C::data_root, "data", 1,
           "SubmitJob datasets are folders under here; nothing outside is read."),
      Text("state_dir", kTraining, &C::state_dir, "state", 1, "Job records, checkpoints and staging models."),
      Int("max_concurrent_jobs", kTraining, &C::max_concurrent_jobs, 1, 0, 64, "jobs",
          "Jobs training at once; more wait QUEUED (0 = service Training disabled)."),
      Int("training_threads", kTraining, &C::training_threads, 1, 1, 1024, "threads",
          "Intra-op threads each job uses; serving keeps `threads`."),
      Choice("training_precision", kTraining, &C::training_precision, "auto", kPrecisionChoices,
             "Training jobs and `spritediffd train`; bf16 is mixed (bf16 convolutions, float32 "
             "weights); auto as for precision."),
      Flag("resume_interrupted_jobs", kTraining, &C::resume_interrupted_jobs, true,
           "On restart, resume jobs the daemon stopped mid-run (false: mark them INTERRUPTED)."),
      Int("max_queued_jobs", kTraining, &C::max_queued_jobs, 16, 1, 100000, "jobs",
          "Unfinished jobs (queued and running); past it, RESOURCE_EXHAUSTED."),
      Int("max_n_feat_x_image_size", kTraining, &C::max_n_feat_x_image_size, 4096, 16, 512 * 32, "",
          "A job's n_feat times image_size (a bound on its memory and time)."),
      Int64("max_epochs_x_images", kTraining, &C::max_epochs_x_images, 20000000, 1, 1000000000000, "images",
            "A job's epochs times its dataset's images."),
      Int("finished_job_retention_h", kTraining, &C::finished_job_retention_h, 168, 0, 24 * 3650, "h",
          "Finished job directories older than this are removed at start; 0 = keep."),

      Text("auth_token_file", kSecurity, &C::auth_token_file, "", 0,
           "\"<role> <sha256-hex>\" lines (roles: sample, train, admin); empty = no authentication."),
      Text("tls_cert_file", kSecurity, &C::tls_cert_file, "", 0,
           "PEM certificate chain; with tls_key_file, turns TLS on."),
      Text("tls_key_file", kSecurity, &C::tls_key_file, "", 0, "PEM private key of tls_cert_file."),
      Text("tls_client_ca_file", kSecurity, &C::tls_client_ca_file, "", 0,
           "PEM CA bundle: when set, clients must present a certificate it signed (mutual TLS)."),
      Int("tls_reload_s", kSecurity, &C::tls_reload_s, 60, 1, 86400, "s",
          "Certificate files are reloaded when they change (checked this often) and on SIGHUP."),
      Flag("allow_insecure_public", kSecurity, &C::allow_insecure_public, false,
           "Listen on a non-loopback address without TLS and tokens (accepting the risk)."),
      Flag("reflection", kSecurity, &C::reflection, true, "gRPC server reflection (service schemas, no data)."),

      Int("max_concurrent_streams", kConnections, &C::max_concurrent_streams, 100, 1, 100000, "calls",
          "Calls per connection; more wait for a free stream."),
      Int("keepalive_time_s", kConnections, &C::keepalive_time_s, 60, 1, 86400, "s",
          "The server pings an idle connection this often."),
      Int("keepalive_timeout_s", kConnections, &C::keepalive_timeout_s, 20, 1, 3600, "s",
          "and closes it when the ping is not answered within this."),
      Int("max_connection_idle_s", kConnections, &C::max_connection_idle_s, 600, 0, 86400 * 7, "s",
          "A connection with no calls this long is closed; 0 = never."),

      Int("release_memory_s", kMemory, &C::release_memory_s, 1, 0, 86400, "s",
          "With glibc malloc (a build without tcmalloc): free heap pages go back to the system this "
          "often (malloc_trim), so changing batch sizes do not make RSS creep; 0 = never."),
      Int("release_idle_s", kMemory, &C::release_idle_s, 10, 0, 86400, "s",
          "With tcmalloc (the default build): free pages go back once no step ran and no job was busy "
          "this long; under load they are reused, so RSS stays at the load's high-water mark; 0 = never."),
  };
}

}  // namespace

std::string ConfigKeyRange(const ConfigKey& key) {
  return "[" + FormatNumber(key.min) + ", " + FormatNumber(key.max) + "]";
}

const std::vector<ConfigKey>& ConfigKeys() {
  static const std::vector<ConfigKey> keys = MakeKeys();
  return keys;
}

AppConfig::AppConfig() {
  for (const ConfigKey& key : ConfigKeys()) {
    std::visit(
        [&](auto field) {
          using T = std::decay_t<decltype(this->*field)>;
          if constexpr (std::is_same_v<T, std::string>) {
            this->*field = std::get<std::string>(key.default_value);
          } else if constexpr (std::is_same_v<T, bool>) {
            this->*field = std::get<bool>(key.default_value);
          } else if constexpr (std::is_same_v<T, double>) {
            this->*field = std::get<double>(key.default_value);
          } else {
            this->*field = static_cast<T>(std::get<int64_t>(key.default_value));
          }
        },
        key.field);
  }
}

std::string ConfigKeyRule(const ConfigKey& key) {
  if (key.bool_or_auto) return "true, false or \"auto\"";
  if (*key.choices != '\0') {
    std::string out = "one of ";
    const std::vector<std::string> items = SplitChoices(key.choices);
    for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + ("\"" + items[i] + "\"");
    return out;
  }
  if (std::holds_alternative<std::string AppConfig::*>(key.field)) return key.min > 0 ? "string, not empty" : "string";
  if (std::holds_alternative<bool AppConfig::*>(key.field)) return "true or false";
  if (std::holds_alternative<double AppConfig::*>(key.field)) return "number in " + ConfigKeyRange(key);
  return "whole number in " + ConfigKeyRange(key);
}

std::string ConfigKeyDefaultJson(const ConfigKey& key) {
  return std::visit([](const auto& v) { return json(v).dump(); }, key.default_value);
}

namespace {

// Wraps text into comment lines of at most width characters after the prefix.
std::string CommentLines(const std::string& text, const std::string& prefix, size_t width = 96) {
  std::string out, line;
  std::istringstream words(text);
  std::string word;
  while (words >> word) {
    if (!line.empty() && line.size() + 1 + word.size() > width) {
      out += prefix + line + "\n";
      line.clear();
    }
    line += (line.empty() ? "" : " ") + word;
  }
  if (!line.empty()) out += prefix + line + "\n";
  return out;
}

std::string UnitSuffix(const ConfigKey& key) { return *key.unit != '\0' ? std::string(" (") + key.unit + ")" : ""; }

}  // namespace

std::string ConfigValueJson(const ConfigKey& key, const AppConfig& config) {
  return std::visit(
      [&](auto field) {
        const auto& value = config.*field;
        if constexpr (std::is_same_v<std::decay_t<decltype(value)>, std::string>) {
          if (key.bool_or_auto && value != "auto") return json(value == "true").dump();
        }
        return json(value).dump();
      },
      key.field);
}

std::string CommentedConfigText(const AppConfig& config, const std::string& title) {
  std::string out = CommentLines(title, "// ") +
                    "// A config file needs only the keys a deployment changes; // and /* */ comments are allowed.\n"
                    "// Read from --config FILE, else $SPRITEDIFF_CONFIG, else /etc/spritediff/config.json.\n"
                    "{\n";
  const std::vector<ConfigKey>& keys = ConfigKeys();
  std::string section;
  for (size_t i = 0; i < keys.size(); ++i) {
    const ConfigKey& key = keys[i];
    if (section != key.section) {
      section = key.section;
      out += std::string(i ? "\n" : "") + "  // == " + section + "\n";
    }
    out += CommentLines(std::string(key.doc) + " " + ConfigKeyRule(key) + UnitSuffix(key) + ".", "  // ");
    if (ConfigValueJson(key, config) != ConfigKeyDefaultJson(key)) {
      out += "  // (default: " + ConfigKeyDefaultJson(key) + ")\n";
    }
    out += "  \"" + std::string(key.name) + "\": " + ConfigValueJson(key, config) + (i + 1 < keys.size() ? "," : "") +
           "\n";
  }
  return out + "}\n";
}

std::string DefaultConfigText() {
  return CommentedConfigText(AppConfig(),
                             "spritediffd configuration: every key at its built-in default "
                             "(`spritediffd config --defaults`).");
}

std::string ConfigMarkdown() {
  std::string out =
      "# Configuration\n\n"
      "<!-- Generated by `spritediffd config --markdown` from the key table in common/config_keys.cc.\n"
      "     Do not edit: the test config_docs fails when this page and the table differ.\n"
      "     Regenerate: build/bin/spritediffd config --markdown > docs/configuration.md -->\n\n"
      "spritediffd reads one JSON config file (comments allowed), chosen in this order:\n\n"
      "1. `--config FILE` (a named file that is missing is an error);\n"
      "2. else the file named by `$SPRITEDIFF_CONFIG`;\n"
      "3. else `/etc/spritediff/config.json`, where the Debian package installs it, when it exists;\n"
      "4. else none: the built-in defaults below.\n\n"
      "The start-up line names the file it used (`config ...`). A file carries only the keys a\n"
      "deployment changes; the built-in defaults are the values we ship. An unknown key, a value of\n"
      "the wrong type or one out of range stops the daemon with the key's name. Flags given on the\n"
      "command line (`--port`, `--bind`, `--models-dir`, `--device`, `--threads`, `--precision`, ...)\n"
      "override the file. `spritediffd config --defaults` prints a commented file with every key;\n"
      "`spritediffd config` prints the values a command would use and where they came from.\n";
  std::string section;
  for (const ConfigKey& key : ConfigKeys()) {
    if (section != key.section) {
      section = key.section;
      out += "\n## " + section + "\n\n| key | default | type and range | unit | what it does |\n|---|---|---|---|---|\n";
    }
    out += "| `" + std::string(key.name) + "` | `" + ConfigKeyDefaultJson(key) + "` | " + ConfigKeyRule(key) + " | " +
           key.unit + " | " + key.doc + " |\n";
  }
  return out;
}

}  // namespace spritediff
