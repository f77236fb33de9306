#include "core/model.h"

#include <variant>

namespace spritediff {

namespace nn = torch::nn;

Status ModelConfig::Validate() const {
  if (in_channels < 1 || in_channels > 4) {
    return Status::InvalidArgument("in_channels must be in [1, 4], got " + std::to_string(in_channels));
  }
  if (n_feat < 8 || n_feat % 8 != 0 || n_feat > 1024) {
    return Status::InvalidArgument("n_feat must be a multiple of 8 in [8, 1024], got " +
                                   std::to_string(n_feat));
  }
  if (n_cfeat < 1 || n_cfeat > 1024) {
    return Status::InvalidArgument("n_cfeat must be in [1, 1024], got " + std::to_string(n_cfeat));
  }
  if (height < 8 || height % 4 != 0 || height > 256) {
    return Status::InvalidArgument("height must be a multiple of 4 in [8, 256], got " +
                                   std::to_string(height));
  }
  return Status::Ok();
}

namespace {
nn::Sequential ConvBnGelu(int in, int out) {
  return nn::Sequential(nn::Conv2d(nn::Conv2dOptions(in, out, 3).stride(1).padding(1)),
                        nn::BatchNorm2d(out), nn::GELU());
}
}  // namespace

ResidualConvBlockImpl::ResidualConvBlockImpl(int in_channels, int out_channels, bool is_res)
    : is_res_(is_res), same_channels_(in_channels == out_channels) {
  conv1_ = register_module("conv1", ConvBnGelu(in_channels, out_channels));
  conv2_ = register_module("conv2", ConvBnGelu(out_channels, out_channels));
  if (is_res_ && !same_channels_) {
    shortcut_ = register_module("shortcut", nn::Conv2d(nn::Conv2dOptions(in_channels, out_channels, 1)));
  }
}

namespace {
// The alternative T of a module option's variant, or null: libtorch 1.x holds these options in
// c10::variant and 2.x in std::variant; the unqualified call finds whichever get_if fits, by
// argument-dependent lookup.
template <typename T, typename Variant>
const T* VariantAlternative(const Variant& v) {
  using std::get_if;
  return get_if<T>(&v);
}

// Folds the BatchNorm at index 1 of a (Conv2d, BatchNorm2d, GELU) sequence into the Conv2d.
void FoldConvBn(nn::Sequential& seq) {
  auto conv = seq->ptr(0)->as<nn::Conv2d>();
  auto bn = seq->ptr(1)->as<nn::BatchNorm2d>();
  const torch::Tensor scale = bn->weight / torch::sqrt(bn->running_var + bn->options.eps());
  conv->weight.mul_(scale.view({-1, 1, 1, 1}));
  conv->bias.sub_(bn->running_mean).mul_(scale).add_(bn->bias);
}

// The convolution's forward; with bf16 (mixed-precision training), a float32 convolution with
// zero padding given as sizes (every one here) computes in bfloat16 from bf16 copies of x and
// its float32 weights, its result cast back to float32. Any other runs libtorch's own forward.
torch::Tensor Convolution(nn::Conv2dImpl& conv, const torch::Tensor& x, bool bf16) {
  const auto& o = conv.options;
  const auto* padding = VariantAlternative<torch::ExpandingArray<2>>(o.padding());
  if (!bf16 || padding == nullptr || VariantAlternative<torch::enumtype::kZeros>(o.padding_mode()) == nullptr ||
      conv.weight.scalar_type() != torch::kFloat32 || x.scalar_type() != torch::kFloat32) {
    return conv.forward(x);
  }
  const auto half = torch::kBFloat16;
  const torch::Tensor bias = conv.bias.defined() ? conv.bias.to(half) : torch::Tensor();
  return torch::conv2d(x.to(half), conv.weight.to(half), bias, *o.stride(), **padding, *o.dilation(), o.groups())
      .to(torch::kFloat32);
}

// conv -> (BatchNorm unless folded) -> GELU, with the sequence's own modules.
torch::Tensor ConvBnGeluForward(const nn::Sequential& seq, const torch::Tensor& x, bool fused, bool bf16) {
  torch::Tensor y = Convolution(*seq->ptr(0)->as<nn::Conv2d>(), x, bf16);
  if (!fused) y = seq->ptr(1)->as<nn::BatchNorm2d>()->forward(y);
  return torch::gelu(y);
}
}  // namespace

void ResidualConvBlockImpl::FuseBatchNorm() {
  if (fused_) return;
  torch::NoGradGuard no_grad;
  FoldConvBn(conv1_);
  FoldConvBn(conv2_);
  fused_ = true;
}

torch::Tensor ResidualConvBlockImpl::forward(const torch::Tensor& x) {
  torch::Tensor x2 =
      ConvBnGeluForward(conv2_, ConvBnGeluForward(conv1_, x, fused_, bf16_convs_), fused_, bf16_convs_);
  if (!is_res_) return x2;
  torch::Tensor skip = same_channels_ ? x : Convolution(*shortcut_, x, bf16_convs_);
  return (skip + x2) / 1.414;  // the course's constant, kept so imported weights behave alike
}

UnetDownImpl::UnetDownImpl(int in_channels, int out_channels) {
  model_ = register_module("model", nn::Sequential(ResidualConvBlock(in_channels, out_channels),
                                                   ResidualConvBlock(out_channels, out_channels),
                                                   nn::MaxPool2d(nn::MaxPool2dOptions(2))));
}

UnetUpImpl::UnetUpImpl(int in_channels, int out_channels) {
  model_ = register_module(
      "model", nn::Sequential(nn::ConvTranspose2d(nn::ConvTranspose2dOptions(in_channels, out_channels, 2).stride(2)),
                              ResidualConvBlock(out_channels, out_channels),
                              ResidualConvBlock(out_channels, out_channels)));
}

namespace {
// A transposed convolution whose kernel equals its stride (every one in this network) maps
// each input pixel to its own k x k output patch, so it is one matrix product and a reshape:
// out[b, o, h*k+i, w*k+j] = bias[o] + sum_c x[b, c, h, w] * W[c, o, i, j]. libtorch 1.13 runs
// such layers through slow_conv_transpose2d on the CPU (15% of a bf16 forward at batch 64);
// the product goes to BLAS or oneDNN instead.
torch::Tensor PatchTransposedConv(const nn::ConvTranspose2dImpl& convt, const torch::Tensor& x) {
  const torch::Tensor& w = convt.weight;  // [C, O, k, k]
  const int64_t b = x.size(0), c = x.size(1), h = x.size(2), wd = x.size(3);
  const int64_t o = w.size(1), kh = w.size(2), kw = w.size(3);
  const torch::Tensor rows = x.permute({0, 2, 3, 1}).reshape({b * h * wd, c});
  torch::Tensor y = torch::addmm(convt.bias.repeat_interleave(kh * kw), rows, w.reshape({c, o * kh * kw}));
  return y.view({b, h, wd, o, kh, kw}).permute({0, 3, 1, 4, 2, 5}).reshape({b, o, h * kh, wd * kw});
}

bool IsPatchTransposedConv(const nn::ConvTranspose2dImpl& convt) {
  const auto& opt = convt.options;
  auto all = [](const torch::ExpandingArray<2>& a, int64_t v) { return (*a)[0] == v && (*a)[1] == v; };
  const auto* padding = VariantAlternative<torch::ExpandingArray<2>>(opt.padding());
  return *opt.kernel_size() == *opt.stride() && padding && all(*padding, 0) && all(opt.output_padding(), 0) &&
         all(opt.dilation(), 1) && opt.groups() == 1 && opt.bias();
}

// A Sequential's forward, with transposed convolutions as above, and with the layers a bf16
// network keeps in float32 (transposed convolutions, GroupNorm) run in their weights' dtype.
// With bf16_convs, a Conv2d that is not the sequence's last computes in bf16 (mixed precision).
torch::Tensor ForwardSequential(nn::Sequential seq, torch::Tensor x, bool bf16_convs = false) {
  size_t index = 0;
  for (auto& any : *seq) {
    const bool last = ++index == seq->size();
    if (auto* conv = any.ptr()->as<nn::Conv2dImpl>(); conv && bf16_convs && !last) {
      x = Convolution(*conv, x, true);
    } else if (auto* convt = any.ptr()->as<nn::ConvTranspose2dImpl>()) {
      const auto dtype = convt->weight.scalar_type();
      const torch::Tensor in = x.to(dtype);
      // Inference only. With gradients on, libtorch 1.13 gave the layers before it gradients
      // of 1e28 (uninitialised memory) through this product, though its forward is exact, so
      // training keeps libtorch's kernel.
      // On a GPU, cuDNN's own kernel is one launch where the product takes four.
      const bool patch = !torch::GradMode::is_enabled() && in.device().is_cpu() && IsPatchTransposedConv(*convt);
      x = (patch ? PatchTransposedConv(*convt, in) : convt->forward(in)).to(x.scalar_type());
    } else if (auto* norm = any.ptr()->as<nn::GroupNormImpl>()) {
      x = norm->forward(x.to(norm->weight.scalar_type())).to(x.scalar_type());
    } else {
      x = any.forward(x);
    }
  }
  return x;
}
}  // namespace

torch::Tensor UnetUpImpl::forward(const torch::Tensor& x, const torch::Tensor& skip) {
  return ForwardSequential(model_, torch::cat({x, skip}, 1));
}

EmbedFCImpl::EmbedFCImpl(int input_dim, int emb_dim) {
  model_ = register_module("model", nn::Sequential(nn::Linear(input_dim, emb_dim), nn::GELU(),
                                                   nn::Linear(emb_dim, emb_dim)));
}

ContextUnetImpl::ContextUnetImpl(const ModelConfig& config) : config_(config) {
  const int f = config.n_feat;
  const int side = config.height / 4;
  init_conv_ = register_module("init_conv", ResidualConvBlock(config.in_channels, f, /*is_res=*/true));
  down1_ = register_module("down1", UnetDown(f, f));
  down2_ = register_module("down2", UnetDown(f, 2 * f));
  timeembed1_ = register_module("timeembed1", EmbedFC(1, 2 * f));
  timeembed2_ = register_module("timeembed2", EmbedFC(1, f));
  contextembed1_ = register_module("contextembed1", EmbedFC(config.n_cfeat, 2 * f));
  contextembed2_ = register_module("contextembed2", EmbedFC(config.n_cfeat, f));
  up0_ = register_module(
      "up0", nn::Sequential(nn::ConvTranspose2d(nn::ConvTranspose2dOptions(2 * f, 2 * f, side).stride(side)),
                            nn::GroupNorm(nn::GroupNormOptions(8, 2 * f)), nn::ReLU()));
  up1_ = register_module("up1", UnetUp(4 * f, f));
  up2_ = register_module("up2", UnetUp(2 * f, f));
  out_ = register_module("out", nn::Sequential(nn::Conv2d(nn::Conv2dOptions(2 * f, f, 3).padding(1)),
                                               nn::GroupNorm(nn::GroupNormOptions(8, f)), nn::ReLU(),
                                               nn::Conv2d(nn::Conv2dOptions(f, config.in_channels, 3).padding(1))));
}

torch::Tensor ContextUnetImpl::forward(const torch::Tensor& x, const torch::Tensor& t,
                                       const torch::Tensor& context) {
  const int64_t f = config_.n_feat;
  const int side = config_.height / 4;
  torch::Tensor in = bf16_ ? x.to(torch::kBFloat16) : x;
  if (channels_last_) in = in.contiguous(torch::MemoryFormat::ChannelsLast);
  torch::Tensor h = init_conv_->forward(in);
  torch::Tensor d1 = down1_->forward(h);
  torch::Tensor d2 = down2_->forward(d1);
  // AvgPool over the whole (height/4)^2 map, then GELU: the course's to_vec.
  torch::Tensor hidden = torch::gelu(torch::avg_pool2d(d2, side));

  // The embeddings run in x's dtype (float32 also in a bf16 network), then join h's.
  torch::Tensor tt = t.reshape({-1, 1}).to(x.dtype());
  const auto act = h.scalar_type();
  torch::Tensor cemb1 = contextembed1_->forward(context).view({-1, 2 * f, 1, 1}).to(act);
  torch::Tensor temb1 = timeembed1_->forward(tt).view({-1, 2 * f, 1, 1}).to(act);
  torch::Tensor cemb2 = contextembed2_->forward(context).view({-1, f, 1, 1}).to(act);
  torch::Tensor temb2 = timeembed2_->forward(tt).view({-1, f, 1, 1}).to(act);

  torch::Tensor u1 = ForwardSequential(up0_, hidden);
  torch::Tensor u2 = up1_->forward(cemb1 * u1 + temb1, d2);
  torch::Tensor u3 = up2_->forward(cemb2 * u2 + temb2, d1);
  return ForwardSequential(out_, torch::cat({u3, h}, 1), bf16_convs_).to(x.dtype());
}

void ContextUnetImpl::UseBFloat16Convolutions(bool on) {
  for (const auto& module : modules(/*include_self=*/false)) {
    if (auto* block = module->as<ResidualConvBlockImpl>()) block->UseBFloat16Convolutions(on);
  }
  bf16_convs_ = on;
}

void ConvertForInference(ContextUnet& net, const torch::Device& device, bool fold_batchnorm, bool bf16,
                         bool channels_last_on_cuda) {
  net->eval();
  if (fold_batchnorm) net->FuseBatchNormForInference();
  if (bf16) net->UseBFloat16ForInference();
  if (channels_last_on_cuda && device.is_cuda()) net->UseChannelsLastForInference();
}

void ContextUnetImpl::UseChannelsLastForInference() {
  if (channels_last_) return;
  eval();
  torch::NoGradGuard no_grad;
  for (torch::Tensor& p : parameters()) {
    if (p.dim() == 4) p.set_data(p.contiguous(torch::MemoryFormat::ChannelsLast));
  }
  channels_last_ = true;
}

void ContextUnetImpl::UseBFloat16ForInference() {
  if (bf16_) return;
  eval();
  torch::NoGradGuard no_grad;
  to(torch::kBFloat16);
  for (const auto& module : modules(/*include_self=*/false)) {
    if (auto* convt = module->as<nn::ConvTranspose2dImpl>()) convt->to(torch::kFloat32);
    if (auto* norm = module->as<nn::GroupNormImpl>()) norm->to(torch::kFloat32);
  }
  for (EmbedFC* embed : {&timeembed1_, &timeembed2_, &contextembed1_, &contextembed2_}) (*embed)->to(torch::kFloat32);
  bf16_ = true;
}

void ContextUnetImpl::FuseBatchNormForInference() {
  if (fused_) return;
  eval();  // the running statistics are what gets folded
  for (const auto& module : modules(/*include_self=*/false)) {
    if (auto* block = module->as<ResidualConvBlockImpl>()) block->FuseBatchNorm();
  }
  fused_ = true;
}

int64_t ParameterCount(const torch::nn::Module& module) {
  int64_t n = 0;
  for (const auto& p : module.parameters()) n += p.numel();
  return n;
}

}  // namespace spritediff
