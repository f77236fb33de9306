// spritectl: the command-line client of spritediffd. It speaks only the public proto API.
#include <CLI/CLI.hpp>
#include <grpcpp/grpcpp.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <system_error>
#include <thread>

#include "client/cli_common.h"
#include "client/gif_writer.h"
#include "client/train_commands.h"
#include "common/labels.h"
#include "common/file_util.h"
#include "common/image.h"
#include "common/palette.h"
#include "common/rule_text.h"
#include "common/sampling_rules.h"
#include "common/sprite_sheet.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "spritediff/v1/sprites.grpc.pb.h"

namespace fs = std::filesystem;
namespace v1 = spritediff::v1;
using Clock = std::chrono::steady_clock;
using spritediff::Image;
using spritediff::Result;
using spritediff::Status;

using namespace spritectl;

namespace {

// NAME or NAME:WEIGHT (parsed by common/labels, as the offline commands do).
void AddLabels(v1::SampleRequest& req, const std::vector<std::string>& labels) {
  Result<spritediff::LabelMix> mix = spritediff::ParseLabels(labels);
  if (!mix.ok()) Fail(mix.status().message());
  for (const auto& [name, weight] : *mix) {
    v1::LabelWeight* lw = req.add_labels();
    lw->set_label(name);
    lw->set_weight(weight);
  }
}

void AddContext(v1::SampleRequest& req, const std::string& text) {
  Result<std::vector<float>> values = spritediff::ParseContext(text);
  if (!values.ok()) Fail(values.status().message());
  for (float v : *values) req.add_context(v);
}

// Each sampler's proto value (its --sampler name is SamplerName, common/sampling_rules.h).
const std::vector<std::pair<spritediff::SamplerKind, v1::Sampler>> kSamplers{
    {spritediff::SamplerKind::kDdpm, v1::SAMPLER_DDPM},
    {spritediff::SamplerKind::kDdim, v1::SAMPLER_DDIM},
    {spritediff::SamplerKind::kDpmpp2m, v1::SAMPLER_DPMPP_2M},
    {spritediff::SamplerKind::kDpmpp2mSde, v1::SAMPLER_DPMPP_2M_SDE}};

v1::Sampler SamplerValue(const std::string& name) {
  for (const auto& [kind, value] : kSamplers)
    if (spritediff::SamplerName(kind) == name) return value;
  return v1::SAMPLER_UNSPECIFIED;
}

std::string SamplerLabel(v1::Sampler sampler) {
  for (const auto& [kind, value] : kSamplers)
    if (value == sampler) return spritediff::SamplerName(kind);
  return "unspecified";
}

// Options shared by sample and bench that shape the request. Only what the user set is sent;
// the server fills the rest from the model's defaults and says in Result what it used.
struct RequestOptions {
  std::string model;
  std::vector<std::string> labels;
  std::string context;
  int count = 1;
  std::string sampler;  // empty = the model's
  int steps = 0;        // 0 = the server's default
  double eta = 0;
  double guidance = 1;
  CLI::Option* eta_option = nullptr;       // counts whether --eta was given
  CLI::Option* guidance_option = nullptr;  // counts whether --guidance was given
  uint64_t seed = 0;
  std::string palette;
  std::vector<std::string> palette_colors;
  bool dither = false;
  std::string alpha;  // empty = the server's default (binary)
  std::vector<double> guidance_interval;
};

void AddRequestOptions(CLI::App* cmd, RequestOptions& o, int default_count) {
  o.count = default_count;
  cmd->add_option("--model", o.model, "model name (default: the server's default)");
  cmd->add_option("--label", o.labels, "condition on a label, NAME or NAME:WEIGHT; repeat to mix (e.g. --label hero --label food:0.5)");
  cmd->add_option("--context", o.context, "raw context vector instead of labels, e.g. 1,0,0,0,0");
  cmd->add_option("--count", o.count, "sprites per request")->check(CLI::Range(1, 4096))->capture_default_str();
  cmd->add_option("--sampler", o.sampler, spritediff::SamplerNames() + " (default: the model's; see `models`)")
      ->check(CLI::IsMember(spritediff::SamplerNameList()));
  cmd->add_option("--steps", o.steps, "denoising steps; 0 = the server's default (the model's; T for ddpm)")
      ->check(CLI::Range(0, 100000))->capture_default_str();
  o.eta_option = cmd->add_option("--eta", o.eta, "eta in [0, 1] for ddim (0 = deterministic) and dpmpp-2m-sde "
                                 "(default: the model's)")->check(CLI::Range(spritediff::kMinEta, spritediff::kMaxEta));
  o.guidance_option = cmd->add_option("--guidance", o.guidance, "classifier-free guidance scale in [" +
                                      spritediff::FormatNumber(spritediff::kMinGuidance) + ", " +
                                      spritediff::FormatNumber(spritediff::kMaxGuidance) + "]; "
                                      "1 = conditional only (default: the model's)")
                                      ->check(CLI::Range(spritediff::kMinGuidance, spritediff::kMaxGuidance));
  cmd->add_option("--seed", o.seed, "seed of the first sprite (sprite i uses seed+i); 0 = random")->capture_default_str();
  cmd->add_option("--guidance-interval", o.guidance_interval, "LOW,HIGH in [0, 1]: guidance only at steps from "
                  "t in (LOW*T, HIGH*T] (default: the model's)")->delimiter(',')->expected(2);
  cmd->add_option("--palette", o.palette, "lock the sprites' colours to a named palette: " + spritediff::PaletteNames());
  cmd->add_option("--palette-colors", o.palette_colors, "lock to your own palette: 2..256 colours #rrggbb, "
                  "comma separated")->delimiter(',');
  cmd->add_flag("--dither", o.dither, "Floyd-Steinberg dithering when locking to a palette");
  cmd->add_option("--alpha", o.alpha, "RGBA models: binary (default; opaque or transparent, as pixel art) or soft")
      ->check(CLI::IsMember({"binary", "soft"}));
}

v1::SampleRequest BuildRequest(const RequestOptions& o) {
  if (!o.labels.empty() && !o.context.empty()) Fail("give --label or --context, not both");
  v1::SampleRequest req;
  req.set_model(o.model);
  req.set_count(static_cast<uint32_t>(o.count));
  req.set_sampler(SamplerValue(o.sampler));  // "" -> UNSPECIFIED: the model's
  req.set_steps(static_cast<uint32_t>(o.steps));
  if (o.eta_option != nullptr && o.eta_option->count() > 0) req.set_eta(static_cast<float>(o.eta));
  if (o.guidance_option != nullptr && o.guidance_option->count() > 0) {
    req.set_guidance_scale(static_cast<float>(o.guidance));
  }
  req.set_seed(o.seed);
  AddLabels(req, o.labels);
  if (!o.context.empty()) AddContext(req, o.context);
  if (o.guidance_interval.size() == 2) {
    req.set_guidance_interval_low(static_cast<float>(o.guidance_interval[0]));
    req.set_guidance_interval_high(static_cast<float>(o.guidance_interval[1]));
  }
  req.set_palette(o.palette);
  for (const std::string& c : o.palette_colors) req.add_palette_colors(c);
  req.set_dither(o.dither);
  if (o.alpha == "binary") req.set_alpha(v1::ALPHA_MODE_BINARY);
  if (o.alpha == "soft") req.set_alpha(v1::ALPHA_MODE_SOFT);
  return req;
}

Image DecodeOrFail(const std::string& png) {
  Result<Image> image = spritediff::DecodePng(png);
  if (!image.ok()) Fail("server sent an unreadable PNG: " + image.status().message());
  return *image;
}

// A float from the wire as the decimal the user wrote (0.6f would print as 0.6000000238).
double Decimal(float v) { return std::round(static_cast<double>(v) * 1e6) / 1e6; }

// --background: "checker" or "#rrggbb", for grids and GIFs of RGBA sprites.
spritediff::Background ParseBackground(const std::string& text) {
  spritediff::Background background;
  if (text == "checker") return background;
  Result<spritediff::Palette> solid = spritediff::ParsePaletteColors({text, text});
  if (!solid.ok()) Fail("--background must be checker or #rrggbb, got '" + text + "'");
  background.checkerboard = false;
  std::copy(solid->colors[0].begin(), solid->colors[0].end(), background.rgb);
  return background;
}

// The sprites of one event tiled into a grid; RGBA sprites over `background` (a checkerboard
// by default, so a person sees what is transparent).
Image GridOf(const google::protobuf::RepeatedPtrField<std::string>& pngs, int upscale, int columns,
             spritediff::Background background = {}) {
  std::vector<Image> tiles;
  for (const std::string& png : pngs) {
    const Image sprite = DecodeOrFail(png);
    background.cell = std::max(1, sprite.width * upscale / 8);
    tiles.push_back(spritediff::CompositeOn(spritediff::UpscaleNearest(sprite, upscale), background));
  }
  Result<Image> grid = spritediff::MakeGrid(tiles, columns, upscale);
  if (!grid.ok()) Fail(grid.status().message());
  return *grid;
}

class Progress {
 public:
  explicit Progress(bool tty) : tty_(tty), start_(Clock::now()) {}
  void Update(int step, int total) {
    step = std::clamp(step, 0, std::max(total, 0));
    const double s = std::chrono::duration<double>(Clock::now() - start_).count();
    const double rate = step / std::max(s, 1e-9);
    const double eta = (total - step) / std::max(rate, 1e-9);
    if (tty_) {
      const int width = 30;
      const int filled = total > 0 ? step * width / total : 0;
      std::fprintf(stderr, "\r[%s%s] %d/%d steps  %.1f steps/s  ETA %.1fs ", std::string(filled, '#').c_str(),
                   std::string(width - filled, '.').c_str(), step, total, rate, eta);
    } else {
      std::fprintf(stderr, "step %d/%d (%.1f steps/s, ETA %.1fs)\n", step, total, rate, eta);
    }
    std::fflush(stderr);
  }
  void Done() {
    if (tty_) std::fprintf(stderr, "\n");
  }

 private:
  bool tty_;
  Clock::time_point start_;
};

// The step count a request will run (to pick a frame interval): --steps, or the server's default
// as sprites.proto states it: the model's steps when the sampler is the model's, otherwise T for
// DDPM and min(25, T) for the others.
int ResolveSteps(v1::Sprites::Stub& stub, const RequestOptions& r, const Connection& c) {
  if (r.steps > 0) return r.steps;
  grpc::ClientContext ctx;
  SetDeadline(ctx, c.timeout_s);
  v1::GetModelRequest gm;
  gm.set_name(r.model);
  v1::ModelInfo info;
  grpc::Status s = stub.GetModel(&ctx, gm, &info);
  if (!s.ok()) FailRpc(s, c);
  const int T = static_cast<int>(info.schedule().timesteps());
  const v1::Sampler chosen = SamplerValue(r.sampler);
  if ((chosen == v1::SAMPLER_UNSPECIFIED || chosen == info.sampling().sampler()) && info.sampling().steps() > 0) {
    return static_cast<int>(info.sampling().steps());
  }
  return chosen == v1::SAMPLER_DDPM ? T : std::min(25, T);
}

void ModelsCommand(CLI::App& app) {
  auto c = std::make_shared<Connection>();
  auto json_out = std::make_shared<bool>(false);
  auto* cmd = app.add_subcommand("models", "list the models the daemon serves");
  AddConnectionOptions(cmd, *c);
  cmd->add_flag("--json", *json_out, "machine-readable output");
  cmd->callback([c, json_out] {
    auto stub = v1::Sprites::NewStub(Connect(*c));
    grpc::ClientContext ctx;
    SetDeadline(ctx, c->timeout_s);
    v1::ListModelsResponse resp;
    grpc::Status s = stub->ListModels(&ctx, v1::ListModelsRequest(), &resp);
    if (!s.ok()) FailRpc(s, *c);
    if (*json_out) {
      nlohmann::json j = nlohmann::json::array();
      for (const auto& m : resp.models()) {
        j.push_back({{"name", m.name()}, {"image_size", m.image_size()}, {"labels", std::vector<std::string>(m.labels().begin(), m.labels().end())},
                     {"default", m.is_default()}, {"timesteps", m.schedule().timesteps()}, {"parameters", m.parameters()},
                     {"sampling", {{"sampler", SamplerLabel(m.sampling().sampler())}, {"steps", m.sampling().steps()},
                                   {"eta", m.sampling().eta()}, {"guidance", m.sampling().guidance_scale()}}}});
      }
      std::cout << j.dump(2) << "\n";
      return;
    }
    std::printf("%-20s %-7s %-6s %-8s %-30s %s\n", "NAME", "SIZE", "T", "DEFAULT", "SAMPLING", "LABELS");
    for (const auto& m : resp.models()) {
      std::string labels;
      for (const auto& l : m.labels()) labels += (labels.empty() ? "" : ",") + l;
      const std::string size = std::to_string(m.image_size()) + "x" + std::to_string(m.image_size());
      char sampling[96];
      std::snprintf(sampling, sizeof(sampling), "%s-%u eta %g guidance %g", SamplerLabel(m.sampling().sampler()).c_str(),
                    m.sampling().steps(), m.sampling().eta(), m.sampling().guidance_scale());
      std::printf("%-20s %-7s %-6u %-8s %-30s %s\n", m.name().c_str(), size.c_str(), m.schedule().timesteps(),
                  m.is_default() ? "yes" : "", sampling, labels.c_str());
    }
  });
}

void HealthCommand(CLI::App& app) {
  auto c = std::make_shared<Connection>();
  c->timeout_s = 5;
  auto service = std::make_shared<std::string>();
  auto* cmd = app.add_subcommand("health", "standard gRPC health check; exit 0 when SERVING");
  AddConnectionOptions(cmd, *c);
  cmd->add_option("--service", *service, "service name to check (empty = the whole server)");
  cmd->callback([c, service] {
    auto stub = grpc::health::v1::Health::NewStub(Connect(*c));
    grpc::ClientContext ctx;
    SetDeadline(ctx, c->timeout_s);
    grpc::health::v1::HealthCheckRequest req;
    req.set_service(*service);
    grpc::health::v1::HealthCheckResponse resp;
    grpc::Status s = stub->Check(&ctx, req, &resp);
    if (!s.ok()) FailRpc(s, *c);
    const bool serving = resp.status() == grpc::health::v1::HealthCheckResponse::SERVING;
    std::printf("%s\n", grpc::health::v1::HealthCheckResponse::ServingStatus_Name(resp.status()).c_str());
    if (!serving) throw CLI::RuntimeError(1);
  });
}

void SampleCommand(CLI::App& app) {
  struct Args {
    Connection c;
    RequestOptions r;
    std::string out;
    bool gif = false;
    int frame_every = -1;
    int upscale = 4;
    int columns = 8;
    bool quiet = false;
    bool sheet = false;
    std::string background = "checker";
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("sample", "make sprites; writes sprite-NNN.png, grid.png and with --gif denoise.gif");
  AddConnectionOptions(cmd, a->c);
  // A streamed call that shows progress and stops on Ctrl-C needs no deadline: DDPM-500 on a
  // busy machine can rightly take minutes (issue 12). --timeout still sets one.
  CLI::Option* timeout_option = cmd->get_option("--timeout");
  timeout_option->description("seconds before the call is abandoned (default: none for sample; the progress "
                              "bar shows it is alive and Ctrl-C stops it)");
  AddRequestOptions(cmd, a->r, 16);
  cmd->add_option("--out", a->out, "output directory (created)")->required();
  cmd->add_flag("--gif", a->gif, "also write denoise.gif, one frame per streamed frame plus the final sprites");
  cmd->add_option("--frame-every", a->frame_every, "stream a frame every k steps (default: about 25 frames; 0 = none)")
      ->check(CLI::Range(-1, 100000));
  cmd->add_option("--upscale", a->upscale, "nearest-neighbour factor for grid.png and the GIF")->check(CLI::Range(1, 32))
      ->capture_default_str();
  cmd->add_option("--columns", a->columns, "sprites per grid row")->check(CLI::Range(1, 256))->capture_default_str();
  cmd->add_flag("--quiet", a->quiet, "no progress output");
  cmd->add_flag("--sheet", a->sheet, "also write sheet.png (every sprite at native size, transparent gaps) and "
                "sheet.json (TexturePacker JSON-hash atlas: x, y, w, h and the recipe of each sprite)");
  cmd->add_option("--background", a->background, "what grid.png and the GIF show behind transparency: checker or "
                  "#rrggbb")->capture_default_str();
  cmd->callback([a, timeout_option] {
    const spritediff::Background background = ParseBackground(a->background);
    v1::SampleRequest req = BuildRequest(a->r);
    std::error_code ec;
    fs::create_directories(a->out, ec);
    if (ec) Fail("--out " + a->out + ": cannot create (" + ec.message() + ")");
    auto stub = v1::Sprites::NewStub(Connect(a->c));
    // The step count is needed to pick a frame interval.
    const int steps = ResolveSteps(*stub, a->r, a->c);
    const int frame_every = a->frame_every >= 0 ? a->frame_every : std::max(1, steps / 25);
    req.set_frame_every(static_cast<uint32_t>(std::min(frame_every, steps)));

    grpc::ClientContext ctx;
    if (timeout_option->count() > 0) SetDeadline(ctx, a->c.timeout_s);
    auto reader = stub->Sample(&ctx, req);
    v1::SampleEvent ev;
    Progress progress(isatty(STDERR_FILENO) != 0);
    std::vector<Image> gif_frames;
    std::optional<v1::Result> result;
    int frames = 0;
    while (reader->Read(&ev)) {
      if (ev.has_frame()) {
        ++frames;
        if (!a->quiet) progress.Update(static_cast<int>(ev.frame().step()), static_cast<int>(ev.frame().total_steps()));
        if (a->gif) gif_frames.push_back(GridOf(ev.frame().images(), a->upscale, a->columns, background));
      } else if (ev.has_result()) {
        result = ev.result();
      }
    }
    grpc::Status s = reader->Finish();
    if (!a->quiet) progress.Done();
    if (!s.ok()) FailRpc(s, a->c);
    if (!result || result->seeds_size() != result->images_size() || result->images_size() == 0) {
      Fail("the stream ended without a complete result");
    }
    for (int i = 0; i < result->images_size(); ++i) {
      char name[64];
      std::snprintf(name, sizeof(name), "sprite-%03d.png", i);
      Status w = spritediff::WriteFileAtomic((fs::path(a->out) / name).string(), result->images(i));
      if (!w.ok()) Fail(w.message());
    }
    Image grid = GridOf(result->images(), a->upscale, a->columns, background);
    Status w = spritediff::WritePng((fs::path(a->out) / "grid.png").string(), grid);
    if (!w.ok()) Fail(w.message());
    if (a->sheet) {
      std::vector<spritediff::SheetSprite> sprites;
      for (int i = 0; i < result->images_size(); ++i) {
        char name[64];
        std::snprintf(name, sizeof(name), "sprite-%03d.png", i);
        // What makes this one sprite again: the request with count 1 and this sprite's seed.
        nlohmann::json recipe = {{"model", result->model()},
                                 {"seed", result->seeds(i)},
                                 {"sampler", SamplerLabel(result->sampler())},
                                 {"steps", result->steps()},
                                 {"eta", Decimal(result->eta())},
                                 {"guidance", Decimal(result->guidance_scale())},
                                 {"guidance_interval", {Decimal(result->guidance_interval_low()),
                                                        Decimal(result->guidance_interval_high())}}};
        nlohmann::json labels = nlohmann::json::object();
        for (const auto& lw : req.labels()) labels[lw.label()] = lw.has_weight() ? lw.weight() : 1.0f;
        if (!labels.empty()) recipe["labels"] = labels;
        if (req.context_size() > 0) recipe["context"] = std::vector<float>(req.context().begin(), req.context().end());
        if (result->channels() == 4) recipe["alpha"] = result->alpha() == v1::ALPHA_MODE_SOFT ? "soft" : "binary";
        if (!result->palette().empty()) {
          recipe["palette"] = result->palette();
          if (req.palette_colors_size() > 0) {
            recipe["palette_colors"] = std::vector<std::string>(req.palette_colors().begin(), req.palette_colors().end());
          }
          if (req.dither()) recipe["dither"] = true;
        }
        sprites.push_back({name, DecodeOrFail(result->images(i)), std::move(recipe)});
      }
      Result<spritediff::SpriteSheet> sheet = spritediff::MakeSpriteSheet(sprites, "sheet.png", a->columns);
      if (!sheet.ok()) Fail(sheet.status().message());
      w = spritediff::WriteSpriteSheet(*sheet, a->out, "sheet");
      if (!w.ok()) Fail(w.message());
    }
    if (a->gif) {
      gif_frames.push_back(grid);
      w = spritediff::WriteGif((fs::path(a->out) / "denoise.gif").string(), gif_frames, 8, 150);
      if (!w.ok()) Fail(w.message());
    }
    std::printf("%d sprites from %s (%s, %u steps, eta %g, guidance %g, seeds %llu..%llu) in %.0f ms (queued %.1f ms), "
                "%d frames -> %s\n",
                result->images_size(), result->model().c_str(), SamplerLabel(result->sampler()).c_str(), result->steps(),
                result->eta(), result->guidance_scale(),
                static_cast<unsigned long long>(result->seeds(0)),
                static_cast<unsigned long long>(result->seeds(result->seeds_size() - 1)), result->run_ms(),
                result->queued_ms(), frames, a->out.c_str());
  });
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double rank = p / 100.0 * (v.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(rank)), hi = static_cast<size_t>(std::ceil(rank));
  return v[lo] + (v[hi] - v[lo]) * (rank - lo);
}

// Open loop: the most arrivals one run may expect (rate x duration); their outcomes are kept.
constexpr double kMaxOpenLoopArrivals = 1000000;

// One bench connection: its own subchannel, so that N stubs are N connections.
std::unique_ptr<v1::Sprites::Stub> BenchStub(const Connection& c) {
  grpc::ChannelArguments args;
  args.SetInt("grpc.use_local_subchannel_pool", 1);
  args.SetMaxReceiveMessageSize(64 << 20);
  auto channel = MakeChannel(c, args);
  // Connected before the first call: hundreds of bench channels opening at once to a busy
  // server could otherwise fail a first attempt and the call with it (UNAVAILABLE), which
  // would count the client's start-up against the server. Calls still fail fast afterwards.
  channel->WaitForConnected(std::chrono::system_clock::now() +
                            std::chrono::milliseconds(static_cast<int64_t>(c.connect_timeout_s * 1000)));
  return v1::Sprites::NewStub(channel);
}

// One Sample call of the bench, read to its end: status, time to the first event and to the
// end, and the Result (empty unless the status is OK).
struct SampleCall {
  grpc::Status status;
  double first_ms = -1;
  double total_ms = 0;
  v1::Result result;
};

SampleCall RunSample(v1::Sprites::Stub& stub, const v1::SampleRequest& req, double timeout_s) {
  SampleCall call;
  grpc::ClientContext ctx;
  SetDeadline(ctx, timeout_s);
  const auto t0 = Clock::now();
  auto reader = stub.Sample(&ctx, req);
  v1::SampleEvent ev;
  while (reader->Read(&ev)) {
    if (call.first_ms < 0) call.first_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    if (ev.has_result()) call.result = ev.result();
  }
  call.status = reader->Finish();
  call.total_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  return call;
}

// The --mix-steps / --mix-guidance draws for one request (a frame_every past the drawn steps is
// lowered to them).
template <typename Args>
void ApplyMix(const Args& a, std::mt19937_64& rng, v1::SampleRequest& req) {
  if (!a.mix_steps.empty()) {
    req.set_steps(static_cast<uint32_t>(a.mix_steps[rng() % a.mix_steps.size()]));
    if (req.frame_every() > req.steps()) req.set_frame_every(req.steps());
  }
  if (!a.mix_guidance.empty()) {
    req.set_guidance_scale(static_cast<float>(a.mix_guidance[rng() % a.mix_guidance.size()]));
  }
}

nlohmann::json Percentiles(const std::vector<double>& v, std::initializer_list<int> ps) {
  nlohmann::json out = nlohmann::json::object();
  for (int p : ps) out["p" + std::to_string(p)] = Percentile(v, p);
  return out;
}

// Open-loop load (issue 15): arrivals of a Poisson process at a.rate requests/s for
// a.duration seconds, each sent at its time on its own thread whatever happened to the earlier
// ones, so that an overloaded server shows as refusals and latency rather than as a slower
// client. At most a.max_inflight calls are open at once: an arrival past that is not sent and
// is counted as client_dropped (the client, not the server, was the limit). Prints goodput
// (requests answered OK per second of arrivals), latency percentiles of the answered requests,
// and how fast refusals came.
template <typename Args>
void OpenLoop(const Args& a, const v1::SampleRequest& base, uint32_t default_steps) {
  if (a.rate * a.duration > kMaxOpenLoopArrivals) {
    Fail("--rate x --duration must be at most " + std::to_string(static_cast<int64_t>(kMaxOpenLoopArrivals)) +
         " expected arrivals, got " +
         std::to_string(static_cast<int64_t>(a.rate * a.duration)));
  }
  struct Outcome {
    grpc::StatusCode code = grpc::StatusCode::OK;
    double ms = 0;
    int64_t sprites = 0;
    double queued_ms = 0, run_ms = 0;  // the server's own split of an answered request
    double sent_s = 0;                 // arrival time, from the start of the run
    uint32_t steps = 0;                // as the server ran it; for a failed call as asked
    float guidance = 0;                // likewise (0: asked for the model's default)
    bool sent = true;                  // false: no thread could be started for it
  };
  std::vector<std::unique_ptr<v1::Sprites::Stub>> stubs;
  for (int c = 0; c < a.channels; ++c) stubs.push_back(BenchStub(a.c));
  std::mutex mu;
  std::condition_variable idle;
  std::vector<Outcome> outcomes;  // one per sent arrival, filled by its thread
  outcomes.reserve(static_cast<size_t>(a.rate * a.duration * 1.1) + 16);
  int inflight = 0;
  int64_t arrivals = 0, dropped = 0;
  std::mt19937_64 rng(a.mix_seed);
  std::exponential_distribution<double> gap(a.rate);
  const auto start = Clock::now();
  for (double t = gap(rng); t < a.duration; t += gap(rng)) {
    std::this_thread::sleep_until(start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(t)));
    v1::SampleRequest req = base;
    ApplyMix(a, rng, req);
    if (base.seed() != 0) req.set_seed(base.seed() + static_cast<uint64_t>(arrivals) * 4096);
    ++arrivals;
    size_t slot = 0;
    {
      std::lock_guard<std::mutex> lock(mu);
      if (inflight >= a.max_inflight) {
        ++dropped;
        continue;
      }
      ++inflight;
      slot = outcomes.size();
      outcomes.emplace_back();
    }
    v1::Sprites::Stub& stub = *stubs[slot % stubs.size()];
    try {
      std::thread([&, slot, t, req = std::move(req)] {
        const SampleCall call = RunSample(stub, req, a.c.timeout_s);
        const bool ok = call.status.ok();
        std::lock_guard<std::mutex> lock(mu);
        outcomes[slot] = {call.status.error_code(), call.total_ms, call.result.images_size(),
                          call.result.queued_ms(), call.result.run_ms(), t,
                          ok ? call.result.steps() : (req.steps() != 0 ? req.steps() : default_steps),
                          ok ? call.result.guidance_scale() : req.guidance_scale()};
        if (--inflight == 0) idle.notify_all();
      }).detach();
    } catch (const std::system_error&) {  // out of threads: the client, not the server, was the limit
      std::lock_guard<std::mutex> lock(mu);
      outcomes[slot].sent = false;
      ++dropped;
      if (--inflight == 0) idle.notify_all();
    }
  }
  {
    std::unique_lock<std::mutex> lock(mu);
    idle.wait(lock, [&] { return inflight == 0; });
  }
  const double wall = std::chrono::duration<double>(Clock::now() - start).count();
  std::vector<double> ok_ms, refused_ms, queued_ms, run_ms;
  std::map<uint32_t, std::vector<double>> ok_ms_by_steps;  // the mix's long requests set the tail
  std::map<std::string, int> errors;
  int64_t sprites = 0;
  std::ostringstream csv;
  csv << std::fixed << std::setprecision(3)
      << "sent_s,steps,guidance,status,latency_ms,server_queued_ms,server_run_ms\n";
  for (const Outcome& o : outcomes) {
    if (!o.sent) continue;
    const bool ok = o.code == grpc::StatusCode::OK;
    csv << o.sent_s << ',' << o.steps << ',';
    if (o.guidance > 0) csv << o.guidance;  // empty: the model's default (a failed call never learnt it)
    csv << ',' << CodeName(o.code) << ',' << o.ms << ',';
    if (ok) csv << o.queued_ms << ',' << o.run_ms;  // the server's split exists for answered calls only
    csv << '\n';
    if (ok) {
      ok_ms.push_back(o.ms);
      ok_ms_by_steps[o.steps].push_back(o.ms);
      queued_ms.push_back(o.queued_ms);
      run_ms.push_back(o.run_ms);
      sprites += o.sprites;
    } else {
      errors[CodeName(o.code)]++;
      if (o.code == grpc::StatusCode::RESOURCE_EXHAUSTED) refused_ms.push_back(o.ms);
    }
  }
  const double offered = static_cast<double>(arrivals) / a.duration;
  const double goodput = static_cast<double>(ok_ms.size()) / a.duration;
  const double answered_ok = arrivals > 0 ? static_cast<double>(ok_ms.size()) / arrivals : 0.0;
  const nlohmann::json latency = Percentiles(ok_ms, {50, 95, 99}), refusal = Percentiles(refused_ms, {50, 99});
  nlohmann::json report = {
      {"server", a.c.server},
      {"mode", "open-loop"},
      {"rate", a.rate},
      {"duration_s", a.duration},
      {"arrivals", arrivals},
      {"client_dropped", dropped},
      {"offered_rps", offered},
      {"ok", ok_ms.size()},
      {"goodput_rps", goodput},
      {"goodput_ratio", answered_ok},
      {"errors", errors},
      {"wall_s", wall},
      {"sprites", sprites},
      {"latency_ms", latency},
      {"server_queued_ms", Percentiles(queued_ms, {50, 99})},
      {"server_run_ms", Percentiles(run_ms, {50, 99})},
      {"refused_ms", refusal},
  };
  nlohmann::json by_steps = nlohmann::json::object();
  for (const auto& [steps, ms] : ok_ms_by_steps) {
    by_steps[std::to_string(steps)] = {{"ok", ms.size()}, {"latency_ms", Percentiles(ms, {50, 99})}};
  }
  report["by_steps"] = by_steps;
  if (a.json) {
    std::cout << report.dump() << "\n";
  } else {
    std::printf("open loop: %lld arrivals in %.0f s (offered %.2f requests/s)\n", static_cast<long long>(arrivals),
                a.duration, offered);
    std::printf("goodput      %.2f requests/s (%.1f%% of arrivals answered OK)\n", goodput, 100.0 * answered_ok);
    std::printf("latency ms   p50 %.1f  p95 %.1f  p99 %.1f\n", latency["p50"].get<double>(), latency["p95"].get<double>(),
                latency["p99"].get<double>());
    const nlohmann::json& queued = report["server_queued_ms"];
    const nlohmann::json& run = report["server_run_ms"];
    std::printf("in server    queued p50 %.1f  p99 %.1f, running p50 %.1f  p99 %.1f ms\n", queued["p50"].get<double>(),
                queued["p99"].get<double>(), run["p50"].get<double>(), run["p99"].get<double>());
    for (const auto& [steps, ms] : ok_ms_by_steps) {
      std::printf("  %4u steps  %zu answered, latency p50 %.1f  p99 %.1f ms\n", steps, ms.size(), Percentile(ms, 50),
                  Percentile(ms, 99));
    }
    std::printf("refused      %zu (RESOURCE_EXHAUSTED), answered in p99 %.1f ms\n", refused_ms.size(),
                refusal["p99"].get<double>());
    if (dropped > 0) {
      std::printf("not sent     %lld (over --max-inflight %d: the client was the limit)\n",
                  static_cast<long long>(dropped), a.max_inflight);
    }
    std::printf("errors       %s\n", errors.empty() ? "none" : nlohmann::json(errors).dump().c_str());
  }
  // Written after the report is out, so that a bad path costs the file, not the run's figures.
  if (!a.requests_csv.empty()) {
    std::fflush(stdout);
    const spritediff::Status written = spritediff::WriteFileAtomic(a.requests_csv, csv.str());
    if (!written.ok()) Fail("--requests-csv: " + written.message());
  }
}

void BenchCommand(CLI::App& app) {
  struct Args {
    Connection c;
    RequestOptions r;
    int clients = 8;
    int requests = 4;
    int frame_every = 0;
    bool json = false;
    double rate = 0;  // > 0: open loop, Poisson arrivals at this many requests/s
    double duration = 30;
    std::vector<int> mix_steps;
    std::vector<double> mix_guidance;
    uint64_t mix_seed = 1;
    int channels = 8;
    int max_inflight = 512;
    std::string requests_csv;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("bench", "load generator: concurrent clients, throughput and latency percentiles");
  AddConnectionOptions(cmd, a->c);
  AddRequestOptions(cmd, a->r, 1);
  cmd->add_option("--clients", a->clients, "closed loop: concurrent clients (one channel each)")->check(CLI::Range(1, 1024))
      ->capture_default_str();
  cmd->add_option("--requests", a->requests, "closed loop: requests per client, sent one after another")->check(CLI::Range(1, 100000))
      ->capture_default_str();
  cmd->add_option("--frame-every", a->frame_every, "ask for a frame every k steps (0 = none)")->check(CLI::Range(0, 100000))
      ->capture_default_str();
  cmd->add_flag("--json", a->json, "print one JSON object instead of text");
  cmd->add_option("--rate", a->rate, "open loop: requests arrive as a Poisson process at this many per second, "
                  "whatever the answers (0 = closed loop: --clients x --requests)")->check(CLI::Range(0.0, 10000.0))
      ->capture_default_str();
  cmd->add_option("--duration", a->duration, "open loop: seconds of arrivals")->check(CLI::Range(0.1, 86400.0))
      ->capture_default_str();
  cmd->add_option("--mix-steps", a->mix_steps, "each request's steps drawn from these, e.g. 10,25,50")
      ->delimiter(',')->check(CLI::Range(1, 100000));
  cmd->add_option("--mix-guidance", a->mix_guidance, "each request's guidance drawn from these, e.g. 1,2,3")
      ->delimiter(',')->check(CLI::Range(spritediff::kMinGuidance, spritediff::kMaxGuidance));
  cmd->add_option("--mix-seed", a->mix_seed, "seed of the draws (and of the open loop's arrival times)")->capture_default_str();
  cmd->add_option("--channels", a->channels, "open loop: connections the requests are spread over")
      ->check(CLI::Range(1, 1024))->capture_default_str();
  cmd->add_option("--max-inflight", a->max_inflight, "open loop: calls open at once; an arrival past it is not sent "
                  "and is reported as client_dropped")->check(CLI::Range(1, 4096))->capture_default_str();
  cmd->add_option("--requests-csv", a->requests_csv, "open loop: also write one line per sent request (arrival "
                  "time, steps, guidance, status, latency and the server's queued/run split) to this file");
  cmd->callback([a] {
    v1::SampleRequest base = BuildRequest(a->r);
    // Fail fast, with a clear message, when the server is not there.
    auto probe = v1::Sprites::NewStub(Connect(a->c));
    const int steps = ResolveSteps(*probe, a->r, a->c);
    base.set_frame_every(static_cast<uint32_t>(std::min(a->frame_every, steps)));
    if (a->rate > 0) {
      OpenLoop(*a, base, static_cast<uint32_t>(steps));
      return;
    }
    std::mutex mu;
    std::vector<double> latency_ms, ttff_ms, run_ms, queued_ms;
    std::map<std::string, int> errors;
    int64_t sprites = 0;
    std::string used_sampler = a->r.sampler.empty() ? "unspecified" : a->r.sampler;  // as the server reports it
    uint32_t used_steps = static_cast<uint32_t>(a->r.steps);
    double used_eta = 0, used_guidance = 0;
    const auto start = Clock::now();
    std::vector<std::thread> threads;
    for (int ci = 0; ci < a->clients; ++ci) {
      threads.emplace_back([&, ci] {
        auto stub = BenchStub(a->c);
        std::mt19937_64 mix_rng(a->mix_seed * 1000003ULL + static_cast<uint64_t>(ci));
        for (int k = 0; k < a->requests; ++k) {
          v1::SampleRequest req = base;
          if (req.seed() != 0) req.set_seed(base.seed() + static_cast<uint64_t>(ci * a->requests + k) * 4096);
          ApplyMix(*a, mix_rng, req);
          const SampleCall call = RunSample(*stub, req, a->c.timeout_s);
          const v1::Result& result = call.result;
          const double total = call.total_ms, first = call.first_ms;
          std::lock_guard<std::mutex> lock(mu);
          if (!call.status.ok()) {
            errors[CodeName(call.status.error_code())]++;
            continue;
          }
          used_sampler = SamplerLabel(result.sampler());
          used_steps = result.steps();
          used_eta = result.eta();
          used_guidance = result.guidance_scale();
          latency_ms.push_back(total);
          ttff_ms.push_back(first);
          run_ms.push_back(result.run_ms());
          queued_ms.push_back(result.queued_ms());
          sprites += result.images_size();
        }
      });
    }
    for (auto& t : threads) t.join();
    const double wall = std::chrono::duration<double>(Clock::now() - start).count();
    nlohmann::json report = {
        {"server", a->c.server},
        {"clients", a->clients},
        {"requests", a->clients * a->requests},
        {"count", a->r.count},
        {"sampler", used_sampler},
        {"steps", used_steps},
        {"eta", used_eta},
        {"guidance", used_guidance},
        {"ok", latency_ms.size()},
        {"errors", errors},
        {"wall_s", wall},
        {"sprites", sprites},
        {"sprites_per_s", sprites / wall},
        {"latency_ms", Percentiles(latency_ms, {50, 95, 99})},
        {"first_event_ms", Percentiles(ttff_ms, {50, 95, 99})},
        {"server_queued_ms", Percentiles(queued_ms, {50, 95})},
        {"server_run_ms", Percentiles(run_ms, {50, 95})},
    };
    if (a->json) {
      std::cout << report.dump() << "\n";
    } else {
      std::printf("%d clients x %d requests x %d sprites (%s, steps %u, eta %g, guidance %g) in %.2f s\n", a->clients,
                  a->requests, a->r.count, used_sampler.c_str(), used_steps, used_eta, used_guidance, wall);
      std::printf("throughput   %.2f sprites/s, %.2f requests/s\n", sprites / wall, latency_ms.size() / wall);
      const nlohmann::json& lat = report["latency_ms"];
      const nlohmann::json& fe = report["first_event_ms"];
      std::printf("latency ms   p50 %.1f  p95 %.1f  p99 %.1f\n", lat["p50"].get<double>(), lat["p95"].get<double>(),
                  lat["p99"].get<double>());
      std::printf("first event  p50 %.1f  p95 %.1f  p99 %.1f ms\n", fe["p50"].get<double>(), fe["p95"].get<double>(),
                  fe["p99"].get<double>());
      std::printf("errors       %s\n", errors.empty() ? "none" : nlohmann::json(errors).dump().c_str());
    }
    if (!errors.empty()) throw CLI::RuntimeError(1);
  });
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"spritectl: the command-line client of spritediffd"};
  app.require_subcommand(1);
  ModelsCommand(app);
  HealthCommand(app);
  SampleCommand(app);
  BenchCommand(app);
  AddTrainCommands(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return 0;
}
