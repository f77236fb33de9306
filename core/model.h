// ContextUnet: the small conditional U-Net of minDiffusion and the "How Diffusion Models
// Work" course. Submodule names follow the course's so that its state_dicts map one to one.
// Differences from the course, on purpose: a residual block whose channel count changes owns
// a learned 1x1 shortcut (the course makes a fresh random conv on every call).
#pragma once

#include <torch/torch.h>

#include <string>

#include "common/status.h"

namespace spritediff {

struct ModelConfig {
  int in_channels = 3;
  int n_feat = 64;   // base width; GroupNorm(8, .) needs a multiple of 8
  int n_cfeat = 5;   // context vector length
  int height = 16;   // square images; a multiple of 4

  Status Validate() const;
};

class ResidualConvBlockImpl : public torch::nn::Module {
 public:
  ResidualConvBlockImpl(int in_channels, int out_channels, bool is_res = false);
  torch::Tensor forward(const torch::Tensor& x);
  // Folds each eval-mode BatchNorm into the convolution before it (see ContextUnet).
  void FuseBatchNorm();
  // Mixed-precision training (see ContextUnet::UseBFloat16Convolutions).
  void UseBFloat16Convolutions(bool on) { bf16_convs_ = on; }

 private:
  bool is_res_;
  bool same_channels_;
  bool fused_ = false;  // BatchNorms folded into the convolutions: forward skips them
  bool bf16_convs_ = false;
  torch::nn::Sequential conv1_{nullptr}, conv2_{nullptr};
  torch::nn::Conv2d shortcut_{nullptr};
};
TORCH_MODULE(ResidualConvBlock);

class UnetDownImpl : public torch::nn::Module {
 public:
  UnetDownImpl(int in_channels, int out_channels);
  torch::Tensor forward(const torch::Tensor& x) { return model_->forward(x); }

 private:
  torch::nn::Sequential model_{nullptr};
};
TORCH_MODULE(UnetDown);

class UnetUpImpl : public torch::nn::Module {
 public:
  UnetUpImpl(int in_channels, int out_channels);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& skip);

 private:
  torch::nn::Sequential model_{nullptr};
};
TORCH_MODULE(UnetUp);

// Two-layer MLP embedding (Linear, GELU, Linear).
class EmbedFCImpl : public torch::nn::Module {
 public:
  EmbedFCImpl(int input_dim, int emb_dim);
  torch::Tensor forward(const torch::Tensor& x) { return model_->forward(x); }

 private:
  torch::nn::Sequential model_{nullptr};
};
TORCH_MODULE(EmbedFC);

class ContextUnetImpl : public torch::nn::Module {
 public:
  explicit ContextUnetImpl(const ModelConfig& config);

  // x: [B, C, H, W]; t: [B] network time t/T in [0, 1]; context: [B, n_cfeat].
  // Returns the predicted noise, shaped like x.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& context);

  const ModelConfig& config() const { return config_; }

  // For serving only: folds every BatchNorm's running statistics and affine into the
  // convolution before it, W' = W * g / sqrt(v + e), b' = (b - m) * g / sqrt(v + e) + beta,
  // so a forward runs one kernel less per convolution. Same function as the eval-mode network
  // up to float rounding. Irreversible: a fused network must not be trained or saved (its
  // convolution weights are no longer the checkpoint's), which SaveModel refuses.
  void FuseBatchNormForInference();
  bool batchnorm_fused() const { return fused_; }

  // For serving only: runs the network in bfloat16, where oneDNN's bf16 convolutions (AVX-512
  // BF16, AMX) or a GPU's are faster; input and output stay float32. Transposed convolutions
  // and the time/context embeddings keep float32 weights: libtorch 1.13's CPU bf16 transposed
  // convolution computes the wrong shape, and the embeddings are a few small matrices. Fold
  // BatchNorm first (in float32) when both are wanted. Irreversible like the fold: SaveModel
  // refuses such a network.
  void UseBFloat16ForInference();
  bool bfloat16() const { return bf16_; }

  // For serving on a GPU: keeps the 4-D weights and activations channels-last (NHWC), the
  // layout cuDNN's convolution kernels take, instead of converting every convolution's input and
  // output from and to NCHW (41 conversion kernels of the 168 a batch-1 forward runs on an
  // H100; its CUDA graph replays in 0.40 ms instead of 0.48). Input and output keep their
  // shapes, values agree up to float rounding. Not for a CPU (oneDNN has its own layouts). Call
  // it before a StepGraphs captures the network: it replaces the weights' storage.
  void UseChannelsLastForInference();
  bool channels_last() const { return channels_last_; }

  // Mixed precision, for training: the weights, gradients, optimizer state, BatchNorms and
  // everything else stay float32, and each 3x3/1x1 convolution but the output layer computes
  // in bfloat16 from bf16 copies of its input and weights, its result cast back to float32
  // (what autocast does; autograd carries the casts, so gradients reach the float32 weights).
  // Convolutions are 80% of a training step here, and oneDNN's bf16 ones are about twice as
  // fast on a CPU with AVX-512 BF16 (scripts/bench-reference.sh). Reversible; the weights
  // saved are the float32 ones.
  void UseBFloat16Convolutions(bool on);
  bool bfloat16_convolutions() const { return bf16_convs_; }

 private:
  ModelConfig config_;
  bool fused_ = false;
  bool bf16_ = false;
  bool bf16_convs_ = false;
  bool channels_last_ = false;
  ResidualConvBlock init_conv_{nullptr};
  UnetDown down1_{nullptr}, down2_{nullptr};
  EmbedFC timeembed1_{nullptr}, timeembed2_{nullptr};
  EmbedFC contextembed1_{nullptr}, contextembed2_{nullptr};
  torch::nn::Sequential up0_{nullptr};
  UnetUp up1_{nullptr}, up2_{nullptr};
  torch::nn::Sequential out_{nullptr};
};
TORCH_MODULE(ContextUnet);

// Converts a loaded network, already on device and not yet used by a StepGraphs capture (the
// conversions replace its weights), for inference there (eval mode), in the one order they
// compose: fold the BatchNorms (if fold_batchnorm), then bf16 (if bf16), then channels-last on
// a CUDA device (unless channels_last_on_cuda is false). The daemon's scheduler and the offline commands both
// convert through this, so they draw the same sprites.
void ConvertForInference(ContextUnet& net, const torch::Device& device, bool fold_batchnorm, bool bf16,
                         bool channels_last_on_cuda = true);

// Number of trainable parameters.
int64_t ParameterCount(const torch::nn::Module& module);

}  // namespace spritediff
