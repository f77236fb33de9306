#include "core/sampler.h"

#include "core/step_graphs.h"

#include <algorithm>
#include "common/client_text.h"
#include <cmath>
#include <sstream>

namespace spritediff {

namespace {

// A CPU tensor made ready for an asynchronous copy to device: on a CUDA device, its copy in
// pinned memory, which a non-blocking copy sends without a host sync (the caching host allocator
// keeps the pinned block until the copy has run); on a CPU device, itself. A pageable copy waits
// for the device to drain at every step; without that wait a caller that does not wait itself
// (offline sampling: `sample`, `bench`) prepares step k+1 while the device still runs step k, and
// at batch 1 that host time is a good part of a replayed step. The daemon's scheduler waits for
// each step (WaitForDevice), so that its step times are the device's.
torch::Tensor Pinned(const torch::Tensor& host, torch::Device device) {
  // pin_memory() without a device: libtorch 2.x warns at every call that names one.
  return device.is_cuda() ? host.pin_memory() : host;
}

// A CPU tensor's copy on device (see Pinned); on a CPU device, host itself.
torch::Tensor HostToDevice(const torch::Tensor& host, torch::Device device) {
  return Pinned(host, device).to(device, host.scalar_type(), /*non_blocking=*/true);
}
}  // namespace


Status ValidateRowSpec(const RowSpec& spec, int timesteps, int n_cfeat) {
  bool known = false;
  for (SamplerKind k : kAllSamplers) known = known || spec.sampler == k;
  if (!known) return Status::InvalidArgument("sampler must be one of " + SamplerNames());
  for (const Status& s : {CheckSteps(spec.steps, timesteps, "steps"), CheckEta(spec.eta, "eta"),
                          CheckGuidance(spec.guidance, "guidance"),
                          CheckGuidanceInterval(spec.guidance_low, spec.guidance_high, "guidance_interval")}) {
    if (!s.ok()) return s;
  }
  if (static_cast<int>(spec.context.size()) != n_cfeat) {
    return Status::InvalidArgument("context must have " + std::to_string(n_cfeat) + " values, got " +
                                   std::to_string(spec.context.size()));
  }
  for (float v : spec.context) {
    if (!std::isfinite(v) || std::fabs(v) > 100.0f) {
      return Status::InvalidArgument("context values must be finite and within [-100, 100]");
    }
  }
  return Status::Ok();
}

std::vector<int> TimestepSequence(int timesteps, int steps) {
  std::vector<int> seq(steps + 1);
  for (int i = 0; i <= steps; ++i) {
    seq[i] = static_cast<int>(std::llround(static_cast<double>(timesteps) * (steps - i) / steps));
  }
  return seq;
}

SampleRow::SampleRow(const RowSpec& spec, const NoiseSchedule& schedule, const ModelConfig& arch,
                     torch::Device device)
    : spec_(spec),
      timesteps_(TimestepSequence(schedule.timesteps(), spec.steps)),
      generator_(at::detail::createCPUGenerator(spec.seed)) {
  // Noise is drawn on the CPU from the row's own generator, so it is the same on every device.
  x_ = HostToDevice(torch::randn({arch.in_channels, arch.height, arch.height}, generator_, torch::kFloat32), device);
  context_ = HostToDevice(torch::tensor(spec.context, torch::kFloat32), device);
}

namespace {

// DPM-Solver++ (header comment): x_s = A x_t + K ((1 + w) x0_i - w x0_{i-1}) + sigma z with
// w = 1/(2r), written as x_s = a x_t + b eps + c x0_{i-1} + sigma z through
// x0_i = (x_t - sigma_t eps) / alpha_t.
StepRule DpmSolverPlusPlusRule(const NoiseSchedule& sched, double eta, int t, int s, int prev_t) {
  const double alpha_t = std::sqrt(sched.alpha_bar(t)), sigma_t = std::sqrt(1.0 - sched.alpha_bar(t));
  StepRule c;
  if (s == 0) {  // sigma_s = 0: the step lands on the x0 prediction (first order)
    c.a = 1.0 / alpha_t;
    c.b = -sigma_t / alpha_t;
    return c;
  }
  const double alpha_s = std::sqrt(sched.alpha_bar(s)), sigma_s = std::sqrt(1.0 - sched.alpha_bar(s));
  auto lambda = [&](int u) { return 0.5 * std::log(sched.alpha_bar(u) / (1.0 - sched.alpha_bar(u))); };
  const double h = lambda(s) - lambda(t);
  const double decay = std::exp(-eta * h);  // e^{-eta h}
  const double A = sigma_s / sigma_t * decay;
  const double K = -alpha_s * std::expm1(-(1.0 + eta) * h);  // alpha_s (1 - e^{-(1+eta) h})
  double w = 0.0;
  if (prev_t > t) {
    const double r = (lambda(t) - lambda(prev_t)) / h;
    w = 1.0 / (2.0 * r);
  }
  c.a = A + K * (1.0 + w) / alpha_t;
  c.b = -K * (1.0 + w) * sigma_t / alpha_t;
  c.c = -K * w;
  c.sigma = eta > 0 ? sigma_s * std::sqrt(-std::expm1(-2.0 * eta * h)) : 0.0;
  return c;
}

}  // namespace

StepRule ComputeStepRule(const NoiseSchedule& sched, SamplerKind sampler, double eta, int t, int s, int prev_t) {
  if (sampler == SamplerKind::kDpmpp2m) return DpmSolverPlusPlusRule(sched, 0.0, t, s, prev_t);
  if (sampler == SamplerKind::kDpmpp2mSde) return DpmSolverPlusPlusRule(sched, eta, t, s, prev_t);
  const double ab_t = sched.alpha_bar(t);
  const double ab_s = sched.alpha_bar(s);
  StepRule c;
  if (sampler == SamplerKind::kDdpm) {
    const double alpha = (s == t - 1) ? sched.alpha(t) : ab_t / ab_s;
    const double beta = 1.0 - alpha;
    c.a = 1.0 / std::sqrt(alpha);
    c.b = -beta / (std::sqrt(1.0 - ab_t) * std::sqrt(alpha));
    c.sigma = s > 0 ? std::sqrt(beta) : 0.0;
  } else {
    c.sigma = eta * std::sqrt((1.0 - ab_s) / (1.0 - ab_t)) * std::sqrt(1.0 - ab_t / ab_s);
    const double dir = std::sqrt(std::max(0.0, 1.0 - ab_s - c.sigma * c.sigma));
    c.a = std::sqrt(ab_s / ab_t);
    c.b = -std::sqrt(ab_s) * std::sqrt(1.0 - ab_t) / std::sqrt(ab_t) + dir;
  }
  return c;
}

void DenoiseStep(ContextUnet& net, const NoiseSchedule& schedule, const std::vector<SampleRow*>& rows,
                 bool want_x0, StepGraphs* graphs) {
  std::vector<SampleRow*> active;
  for (SampleRow* r : rows)
    if (!r->done()) active.push_back(r);
  if (active.empty()) return;
  torch::NoGradGuard no_grad;
  const int64_t n = static_cast<int64_t>(active.size());
  const torch::Device device = active.front()->x_.device();
  const double T = schedule.timesteps();

  // Per-row coefficients, packed as the columns of one matrix (core/step_graphs.h): one copy to
  // the device per step instead of one per coefficient.
  std::vector<float> coef(static_cast<size_t>(n) * kStepCoefs, 0.0f);
  std::vector<torch::Tensor> xs, ctxs, noise, prev_x0;
  std::vector<int64_t> guided;  // rows that need an unconditional half
  bool any_noise = false, any_history = false, any_multistep = false;
  for (int64_t i = 0; i < n; ++i) {
    SampleRow* r = active[i];
    xs.push_back(r->x_);
    ctxs.push_back(r->context_);
    const int t = r->current_t(), s = r->next_t();
    const double w = GuidanceAt(r->spec_, t, schedule.timesteps());
    if (w != 1.0) guided.push_back(i);
    const bool multistep = r->spec_.sampler == SamplerKind::kDpmpp2m || r->spec_.sampler == SamplerKind::kDpmpp2mSde;
    any_multistep = any_multistep || multistep;
    const StepRule rule = ComputeStepRule(schedule, r->spec_.sampler, r->spec_.eta, t, s, multistep ? r->prev_t_ : -1);
    float* row = coef.data() + i * kStepCoefs;
    row[kCoefTime] = static_cast<float>(t / T);
    row[kCoefGuidance] = static_cast<float>(w);
    row[kCoefA] = static_cast<float>(rule.a);
    row[kCoefB] = static_cast<float>(rule.b);
    row[kCoefC] = static_cast<float>(rule.c);
    row[kCoefSigma] = static_cast<float>(rule.sigma);
    row[kCoefX0Scale] = static_cast<float>(1.0 / std::sqrt(schedule.alpha_bar(t)));
    row[kCoefX0Shift] = static_cast<float>(-std::sqrt(1.0 - schedule.alpha_bar(t)) / std::sqrt(schedule.alpha_bar(t)));
    // Undefined entries become zeros below, and only when some row has noise / history.
    noise.push_back(rule.sigma > 0 ? torch::randn(r->x_.sizes(), r->generator_, torch::kFloat32) : torch::Tensor());
    prev_x0.push_back(rule.c != 0.0 ? r->prev_x0_ : torch::Tensor());
    any_noise = any_noise || rule.sigma > 0;
    any_history = any_history || rule.c != 0.0;
  }
  const torch::IntArrayRef row_sizes = active.front()->x_.sizes();  // every row's x has this shape
  auto stack_or_zeros = [row_sizes](std::vector<torch::Tensor>& parts, const torch::TensorOptions& options) {
    for (torch::Tensor& t : parts)
      if (!t.defined()) t = torch::zeros(row_sizes, options);
    return torch::stack(parts);
  };
  // Coefficients and noise (drawn on the CPU from each row's generator) stay on the host until a
  // path copies them: the graphs straight into their static buffers, the eager step to device.
  const torch::Tensor coef_host = Pinned(torch::from_blob(coef.data(), {n, kStepCoefs}, torch::kFloat32).clone(), device);
  const torch::Tensor noise_host = any_noise ? Pinned(stack_or_zeros(noise, torch::kFloat32), device) : torch::Tensor();
  // History lives where the rows do.
  const torch::Tensor prev = any_history ? stack_or_zeros(prev_x0, active.front()->x_.options()) : torch::Tensor();
  const bool need_x0 = want_x0 || any_multistep;

  torch::Tensor next, x0;
  if (graphs == nullptr ||
      !graphs->Run(xs, ctxs, coef_host, noise_host, prev, !guided.empty(), &next, need_x0 ? &x0 : nullptr)) {
    const torch::Tensor coefs = coef_host.to(device, torch::kFloat32, /*non_blocking=*/true);
    const torch::Tensor z = noise_host.defined() ? noise_host.to(device, torch::kFloat32, true) : torch::Tensor();
    const torch::Tensor x = torch::stack(xs);
    const torch::Tensor ctx = torch::stack(ctxs);
    // Eager: one forward of the n rows plus the unconditional halves of the guided rows only.
    const torch::Tensor tt = coefs.select(1, kCoefTime).contiguous();
    torch::Tensor eps;
    if (guided.empty()) {
      eps = net->forward(x, tt, ctx);
    } else {
      const torch::Tensor gi = HostToDevice(torch::tensor(guided, torch::kInt64), device);
      const torch::Tensor in_x = torch::cat({x, x.index_select(0, gi)});
      const torch::Tensor in_t = torch::cat({tt, tt.index_select(0, gi)});
      const torch::Tensor in_c =
          torch::cat({ctx, torch::zeros({static_cast<int64_t>(guided.size()), ctx.size(1)}, ctx.options())});
      const torch::Tensor out = net->forward(in_x, in_t, in_c);
      eps = out.slice(0, 0, n).clone();
      const torch::Tensor w = coefs.select(1, kCoefGuidance).index_select(0, gi).view({-1, 1, 1, 1});
      eps.index_copy_(0, gi, GuidedEps(eps.index_select(0, gi), out.slice(0, n), w));
    }
    std::pair<torch::Tensor, torch::Tensor> step = StepUpdate(x, eps, coefs, prev, z, need_x0);
    next = step.first;
    x0 = step.second;
  }
  for (int64_t i = 0; i < n; ++i) {
    SampleRow* r = active[i];
    if (r->spec_.sampler == SamplerKind::kDpmpp2m || r->spec_.sampler == SamplerKind::kDpmpp2mSde) {
      r->prev_x0_ = x0[i];
      r->prev_t_ = r->current_t();
    }
    r->x_ = next[i];
    if (want_x0) r->x0_pred_ = x0[i];
    r->position_++;
  }
}

torch::Tensor SampleAll(ContextUnet& net, const NoiseSchedule& schedule, const std::vector<RowSpec>& specs,
                        torch::Device device, StepGraphs* graphs) {
  std::vector<SampleRow> rows;
  rows.reserve(specs.size());
  for (const RowSpec& spec : specs) rows.emplace_back(spec, schedule, net->config(), device);
  std::vector<SampleRow*> ptrs;
  for (SampleRow& r : rows) ptrs.push_back(&r);
  bool pending = true;
  while (pending) {
    DenoiseStep(net, schedule, ptrs, false, graphs);
    pending = false;
    for (SampleRow* r : ptrs) pending = pending || !r->done();
  }
  std::vector<torch::Tensor> out;
  for (SampleRow& r : rows) out.push_back(r.x());
  return torch::stack(out).to(torch::kCPU);
}

Result<std::vector<float>> ContextFromLabels(const std::vector<std::string>& model_labels,
                                             const std::vector<std::pair<std::string, float>>& mix) {
  std::vector<float> ctx(model_labels.size(), 0.0f);
  for (const auto& [name, weight] : mix) {
    auto it = std::find(model_labels.begin(), model_labels.end(), name);
    if (it == model_labels.end()) {
      std::string known;
      for (const auto& l : model_labels) known += (known.empty() ? "" : ", ") + l;
      return Status::InvalidArgument("unknown label '" + Echo(name) + "'; this model knows: " + known);
    }
    if (!std::isfinite(weight) || std::fabs(weight) > 100.0f) {
      return Status::InvalidArgument("label weight for '" + Echo(name) + "' must be finite and within [-100, 100]");
    }
    ctx[it - model_labels.begin()] += weight;
  }
  return ctx;
}

const char* AlphaModeName(AlphaMode mode) { return mode == AlphaMode::kSoft ? "soft" : "binary"; }

bool ParseAlphaMode(const std::string& name, AlphaMode* mode) {
  if (name == "binary") *mode = AlphaMode::kBinary;
  else if (name == "soft") *mode = AlphaMode::kSoft;
  else return false;
  return true;
}

namespace {
// Premultiplied RGB + alpha in [-1, 1] -> straight RGBA in [0, 1] (the rule in sampler.h).
torch::Tensor FinishAlpha(const torch::Tensor& chw, AlphaMode mode) {
  const torch::Tensor unit = chw.add(1.0).mul(0.5).clamp(0.0, 1.0);
  const torch::Tensor premultiplied = unit.slice(0, 0, 3);
  const torch::Tensor alpha = unit.slice(0, 3, 4);
  const torch::Tensor finished = mode == AlphaMode::kBinary ? alpha.ge(0.5).to(torch::kFloat32) : alpha;
  const torch::Tensor colour =
      premultiplied.div(alpha.clamp_min(1.0 / 255.0)).clamp(0.0, 1.0).mul(finished.gt(0).to(torch::kFloat32));
  return torch::cat({colour, finished}, 0);
}
}  // namespace

double GuidanceAt(const RowSpec& spec, int t, int timesteps) {
  const bool inside = t > spec.guidance_low * timesteps && t <= spec.guidance_high * timesteps;
  return inside ? spec.guidance : 1.0;
}

Image TensorToImage(const torch::Tensor& chw, AlphaMode alpha) {
  torch::Tensor x = chw.detach().to(torch::kCPU, torch::kFloat32);
  const bool rgba = x.size(0) == 4;
  torch::Tensor unit = rgba ? FinishAlpha(x, alpha) : x.clamp(-1.0, 1.0).add(1.0).mul(0.5);
  torch::Tensor u8 = unit.mul(255.0).round().to(torch::kUInt8).permute({1, 2, 0}).contiguous();
  const int c = static_cast<int>(u8.size(2));
  const int out_channels = rgba ? 4 : 3;
  Image image(static_cast<int>(u8.size(1)), static_cast<int>(u8.size(0)), out_channels);
  const uint8_t* src = u8.data_ptr<uint8_t>();
  for (int64_t p = 0; p < u8.size(0) * u8.size(1); ++p) {
    for (int k = 0; k < out_channels; ++k) image.pixels[p * out_channels + k] = src[p * c + (c == 1 ? 0 : k)];
  }
  return image;
}

}  // namespace spritediff
