// Reverse-process samplers (DDPM, DDIM, DPM-Solver++) that work row by row: every row of a
// batch carries its own sampler, step count, eta, guidance, context, seeded generator, position
// in its own timestep sequence and (for the multistep solvers) its own previous x0 prediction.
// One DenoiseStep runs one batched forward for all rows (the unconditional halves of guided rows
// included) and advances each row by its own rule. This is what lets the daemon add and retire
// rows at every step (iteration-level batching), and why a row's pixels do not depend on what
// else shares the batch.
//
// Each step, from t to the row's next timestep s < t, is  x_s = a x_t + b eps + c x0_prev + sigma z
// (c is non-zero only for a second-order DPM-Solver++ step):
//   DDPM (Ho et al.), respaced for s < t-1 with alpha = ab_t/ab_s, beta = 1 - alpha:
//     x_s = (x_t - eps * beta / sqrt(1 - ab_t)) / sqrt(alpha) + sqrt(beta) z,  no noise when s = 0
//   DDIM (Song et al.):
//     x0 = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t)
//     sigma = eta * sqrt((1 - ab_s) / (1 - ab_t)) * sqrt(1 - ab_t / ab_s)
//     x_s = sqrt(ab_s) x0 + sqrt(1 - ab_s - sigma^2) eps + sigma z
//   DPM-Solver++(2M) and its SDE variant (Lu et al. 2022, data-prediction form, multistep):
//     alpha_t = sqrt(ab_t), sigma_t = sqrt(1 - ab_t), lambda_t = log(alpha_t / sigma_t),
//     x0_i = (x_t - sigma_t eps) / alpha_t the row's current x0 prediction, x0_{i-1} the one
//     from its previous step (taken at t_prev > t), h = lambda_s - lambda_t,
//     r = (lambda_t - lambda_{t_prev}) / h,
//     D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1}   (second order; D = x0_i on the first step)
//     2M:      x_s = (sigma_s / sigma_t) x_t + alpha_s (1 - e^{-h}) D
//     2M SDE:  x_s = (sigma_s / sigma_t) e^{-eta h} x_t + alpha_s (1 - e^{-(1+eta) h}) D
//                    + sigma_s sqrt(1 - e^{-2 eta h}) z
//     (eta = 1 is the paper's SDE-DPM-Solver++(2M); eta = 0 is 2M; 2M ignores eta.) The last
//     step, to s = 0 where sigma_s = 0 and lambda is infinite, is first order: x_0 = x0_i. The
//     first-order step equals DDIM with eta = 0 (2M) and keeps the marginals of the forward
//     process for an exact x0 (SDE). The history lives in the row, so rows at different
//     positions with different solvers still share one forward.
//
// Guidance: eps = eps_u + w (eps_c - eps_u) from the conditional and unconditional predictions
// (classifier-free guidance, Ho & Salimans), applied only in the row's guidance interval: at a
// step from t with low T < t <= high T; outside it eps = eps_c (w = 1, one forward). Guidance
// at the highest noise levels is what drops modes (Kynkaanniemi et al., NeurIPS 2024, "Applying
// guidance in a limited interval improves sample and distribution quality"); [0, 1] is guidance
// at every step.
//
// Timesteps: every sampler visits the same time-uniform sequence T = t_0 > ... > t_steps = 0
// (below). That is the spacing the DPM-Solver reference code uses in its examples for
// discrete-time models and for multistep data-prediction (guided) sampling; its README suggests
// logSNR-uniform steps for low-resolution images, a spacing worth measuring for 16x16 with the
// quality meter (issue 12). The sequence starts at t = T itself ("trailing", Lin et al. 2023)
// rather than at T - T/steps, which matters most at 10-15 steps: the first step then starts from
// the noise level the model was trained to see at T. One sequence for every sampler also keeps
// mixed batches simple.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "common/image.h"
#include "common/sampling_rules.h"
#include "core/model.h"
#include "core/schedule.h"
#include "common/status.h"

namespace spritediff {

class StepGraphs;  // core/step_graphs.h

// SamplerKind, the sampler names, the eta rule, the default step count and the ranges of steps,
// eta, guidance and its interval: common/sampling_rules.h (torch-free, so spritectl shares them).

// One sprite's recipe, validated.
struct RowSpec {
  SamplerKind sampler = SamplerKind::kDdim;
  int steps = kDefaultDdimSteps;  // 1..T denoising steps
  double eta = 0.0;       // DDIM and DPM++ 2M SDE; 0 deterministic, 1 DDPM-like / the SDE's variance
  double guidance = 1.0;  // classifier-free guidance w; 1 = conditional only (one forward)
  double guidance_low = 0.0;   // the guidance interval (above) as fractions of T: 0 <= low < high <= 1
  double guidance_high = 1.0;
  std::vector<float> context;  // n_cfeat values
  uint64_t seed = 0;
};

// The guidance w a row uses at a step from timestep t (its guidance inside its interval, else 1).
double GuidanceAt(const RowSpec& spec, int t, int timesteps);

// Checks steps, eta, guidance, its interval and context length against a schedule and model;
// the message names the field and its allowed range.
Status ValidateRowSpec(const RowSpec& spec, int timesteps, int n_cfeat);

// The descending timestep sequence a row visits: T = t_0 > t_1 > ... > t_steps = 0.
std::vector<int> TimestepSequence(int timesteps, int steps);

// The coefficients of one step from t to s (< t): x_s = a x_t + b eps + c x0_prev + sigma z.
struct StepRule {
  double a = 1, b = 0, c = 0, sigma = 0;
};
// prev_t: the timestep (> t) of the row's previous x0 prediction, or -1 when it has none; only
// DPM-Solver++ uses it (second order when prev_t >= 0 and s > 0).
StepRule ComputeStepRule(const NoiseSchedule& schedule, SamplerKind sampler, double eta, int t, int s,
                         int prev_t = -1);

// One row being sampled.
class SampleRow {
 public:
  SampleRow(const RowSpec& spec, const NoiseSchedule& schedule, const ModelConfig& arch, torch::Device device);

  const RowSpec& spec() const { return spec_; }
  bool done() const { return position_ + 1 >= static_cast<int>(timesteps_.size()); }
  int steps_done() const { return position_; }
  int steps_total() const { return static_cast<int>(timesteps_.size()) - 1; }
  int current_t() const { return timesteps_[position_]; }
  int next_t() const { return timesteps_[position_ + 1]; }

  const torch::Tensor& x() const { return x_; }            // [C, H, W], current sample
  const torch::Tensor& x0_pred() const { return x0_pred_; }  // last predicted x0; undefined before a step

 private:
  friend void DenoiseStep(ContextUnet& net, const NoiseSchedule& schedule, const std::vector<SampleRow*>& rows,
                          bool want_x0, StepGraphs* graphs);
  RowSpec spec_;
  std::vector<int> timesteps_;
  int position_ = 0;
  torch::Generator generator_;
  torch::Tensor context_;  // [n_cfeat] on the device
  torch::Tensor x_;
  torch::Tensor x0_pred_;
  // DPM-Solver++ history: the x0 prediction of the previous step and its timestep (-1: none).
  torch::Tensor prev_x0_;
  int prev_t_ = -1;
};

// Advances every row that is not done by one step. The network must be in eval mode.
// graphs: the model's StepGraphs (core/step_graphs.h) to run the step as a replayed CUDA graph;
// null, or a row count past its largest bucket, runs it eagerly.
void DenoiseStep(ContextUnet& net, const NoiseSchedule& schedule, const std::vector<SampleRow*>& rows,
                 bool want_x0 = false, StepGraphs* graphs = nullptr);

// Runs rows built from specs to completion as one batch; returns [N, C, H, W] in [-1, 1].
torch::Tensor SampleAll(ContextUnet& net, const NoiseSchedule& schedule, const std::vector<RowSpec>& specs,
                        torch::Device device, StepGraphs* graphs = nullptr);

// A one-hot mix: sum of weight * onehot(label). Unknown labels are an error naming them.
Result<std::vector<float>> ContextFromLabels(const std::vector<std::string>& model_labels,
                                             const std::vector<std::pair<std::string, float>>& mix);

// How a 4-channel sprite's alpha is finished. Binary is pixel art's: a pixel is opaque where
// the predicted alpha is at least one half, else fully transparent, so no pixel is partly
// transparent. Soft keeps the predicted alpha, rounded to 8 bits.
enum class AlphaMode { kBinary, kSoft };
// "binary", "soft": the names requests and CLIs use.
const char* AlphaModeName(AlphaMode mode);
bool ParseAlphaMode(const std::string& name, AlphaMode* mode);

// [C, H, W] in [-1, 1] -> 8-bit image (clamped). 1 or 3 channels give RGB. 4 channels
// (premultiplied RGB and alpha, core/dataset.h) give straight RGBA: with p the premultiplied
// colour and a the alpha, both mapped to [0, 1], a' = (a >= 1/2) for binary alpha or a for soft,
// and the colour is p / a (clamped to [0, 1]) where a' > 0, 0 where the pixel is transparent.
Image TensorToImage(const torch::Tensor& chw, AlphaMode alpha = AlphaMode::kBinary);

}  // namespace spritediff
