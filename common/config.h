// The daemon's configuration: one JSON file (configs/default.json) parsed into one typed
// struct with defaults; command-line flags override fields after parsing.
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"

namespace spritediff {

struct AppConfig {
  std::string bind = "127.0.0.1";
  int port = 50051;
  int metrics_port = 0;          // Prometheus /metrics over HTTP on bind:metrics_port; 0 = off
  std::string models_dir = "models";
  std::string default_model = "sprites16";
  std::string device = "auto";   // auto | cpu | cuda | cuda:N
  int threads = 0;               // intra-op threads; 0 = all cores
  // Batching.
  int max_batch_rows = 64;       // rows in one denoising forward (guidance halves not counted)
  int cpu_batch_rows = 0;        // on a CPU device, new requests wait once the batch holds this
                                 // many rows (an empty batch takes any request); 0 = max_batch_rows
  int cpu_batch_wait_steps = 4;  // on a CPU with cpu_batch_rows set, a new request waits for a
                                 // place only if the running requests free one within this many
                                 // steps, else it joins up to max_batch_rows (not within 5 s of a
                                 // refused request: overload); 0 = always waits
  int cpu_overload_batch_rows = 0;  // on a CPU, the rows the batch fills to within 5 s of a
                                    // refused request (overload); 0 = cpu_batch_rows
  int max_queued_rows = 1024;    // rows waiting for admission; past it, RESOURCE_EXHAUSTED
  int max_rows_per_request = 64; // upper bound of SampleRequest.count
  std::string fold_batchnorm = "false";  // serve with BatchNorms folded into their convolutions
                                         // (same sprites up to float rounding): "true", "false",
                                         // or "auto" (JSON true/false/"auto"): on a CUDA device
                                         // only, where it takes 18 kernels from each step; on a
                                         // CPU it measured no steady gain (core/runtime.h)
  double max_queue_wait_s = 0;   // refuse a request whose estimated wait for a place in the batch
                                 // (from the steps left ahead of it) is longer; 0 = off (the shipped
                                 // configs/default.json sets it)
  std::string precision = "fp32";  // inference: fp32 | bf16 | auto (bf16 on a CPU with native
                                   // bf16, core/runtime.h)
  std::string training_precision = "fp32";  // training jobs and `train`: fp32 | bf16 | auto; bf16
                                            // is mixed (bf16 convolutions, float32 weights)
  bool cuda_graphs = true;       // on a CUDA device, replay each batch size's denoising step as a
                                 // captured CUDA graph (core/step_graphs.h); no effect on CPU
  // Frames.
  int max_frames_per_request = 100;  // a finer frame_every is coarsened to stay within this
  int max_pending_frames = 4;        // frames buffered for a slow reader before older ones drop
  int shutdown_grace_s = 10;
  // Training jobs (service Training).
  std::string data_root = "data";        // SubmitJob datasets are folders under here; nothing outside
  std::string state_dir = "state";       // job records, checkpoints and staging models
  int max_concurrent_jobs = 1;           // jobs training at once; more wait QUEUED (0 = Training disabled)
  int training_threads = 1;              // intra-op threads each job uses; serving keeps `threads`
  bool resume_interrupted_jobs = true;   // on restart, resume jobs the daemon stopped mid-run
                                         // (false: mark them INTERRUPTED)
  int max_queued_jobs = 16;              // unfinished jobs (queued + running); past it, RESOURCE_EXHAUSTED
  int max_n_feat_x_image_size = 4096;    // a job's n_feat x image_size (128 at 32px, 256 at 16px)
  int64_t max_epochs_x_images = 20000000;  // a job's epochs x dataset images
  int finished_job_retention_h = 168;    // finished job dirs older than this are removed at start (0 = keep)
  // Security (see deploy/README.md). Without TLS and a token file the daemon only listens on a
  // loopback address, unless allow_insecure_public says otherwise.
  std::string auth_token_file;           // "<role> <sha256-hex>" lines (server/auth.h); empty = no auth
  std::string tls_cert_file;             // PEM certificate chain; with tls_key_file enables TLS
  std::string tls_key_file;              // PEM private key
  std::string tls_client_ca_file;        // PEM CA bundle: when set, clients must present a cert it signed (mTLS)
  int tls_reload_s = 60;                 // certificate files are reloaded when they change (checked this often) and on SIGHUP
  bool allow_insecure_public = false;    // listen on a non-loopback address without TLS + tokens
  bool reflection = true;                // gRPC server reflection (service schemas, no data)
  std::string metrics_bind = "127.0.0.1";  // address of the /metrics HTTP listener
  // Connection policy (gRPC channel arguments).
  int max_concurrent_streams = 100;      // per connection; more calls wait for a free stream
  int keepalive_time_s = 60;             // server pings an idle connection this often
  int keepalive_timeout_s = 20;          // and closes it when the ping is not answered
  int max_connection_idle_s = 600;       // a connection with no calls this long is closed (0 = never)
  // Memory, with glibc malloc (a build without tcmalloc): every this many seconds the daemon
  // hands the heap pages that are free back to the system (malloc_trim). Without it, batches of
  // changing sizes left free pages inside the heap and RSS crept up under load. 0 = never.
  int release_memory_s = 1;
  // Memory, with tcmalloc (the default build): free pages go back to the system once no
  // sampling step ran and no training job was busy for this many seconds. Under load tcmalloc
  // reuses them, so RSS stays at the load's high-water mark; handing them back in the short
  // lulls between bursts made RSS climb from minute to minute (scripts/load-faults.sh). 0 = never.
  int release_idle_s = 10;

  Status Validate() const;
  // A one-line refusal when the listen address is public and TLS or the token file is missing
  // (and allow_insecure_public is false); empty when the config may start.
  std::string InsecurePublicRefusal() const;
};

// Reads path (missing file -> error) and fills fields present in it over the defaults.
Result<AppConfig> LoadConfig(const std::string& path);

}  // namespace spritediff
