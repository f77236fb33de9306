#include "core/classifier.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <sstream>

namespace spritediff {

namespace nn = torch::nn;

Status ClassifierConfig::Validate() const {
  if (num_classes < 2 || num_classes > 1000) return Status::InvalidArgument("classifier needs 2..1000 classes");
  if (height < 4 || height > 256 || height % 4 != 0) {
    return Status::InvalidArgument("classifier height must be a multiple of 4 in [4, 256]");
  }
  if (channels != 3 && channels != 4) return Status::InvalidArgument("classifier channels must be 3 or 4");
  if (width < 8 || width % 8 != 0 || width > 512) return Status::InvalidArgument("classifier width must be 8..512, a multiple of 8");
  if (feature_dim < 2 || feature_dim > 4096) return Status::InvalidArgument("classifier feature_dim must be in [2, 4096]");
  return Status::Ok();
}

namespace {

// Two 3x3 convs, each followed by GroupNorm and SiLU.
void AddStage(nn::Sequential& seq, int in, int out) {
  seq->push_back(nn::Conv2d(nn::Conv2dOptions(in, out, 3).padding(1)));
  seq->push_back(nn::GroupNorm(8, out));
  seq->push_back(nn::SiLU());
  seq->push_back(nn::Conv2d(nn::Conv2dOptions(out, out, 3).padding(1)));
  seq->push_back(nn::GroupNorm(8, out));
  seq->push_back(nn::SiLU());
}

}  // namespace

SpriteClassifierImpl::SpriteClassifierImpl(const ClassifierConfig& config) : config_(config) {
  const int w = config.width;
  nn::Sequential body;
  AddStage(body, config.channels, w);
  body->push_back(nn::AvgPool2d(nn::AvgPool2dOptions(2)));
  AddStage(body, w, 2 * w);
  body->push_back(nn::AvgPool2d(nn::AvgPool2dOptions(2)));
  AddStage(body, 2 * w, 4 * w);
  body_ = register_module("body", body);
  feature_ = register_module("feature", nn::Sequential(nn::Linear(4 * w, config.feature_dim), nn::SiLU()));
  head_ = register_module("head", nn::Linear(config.feature_dim, config.num_classes));
}

torch::Tensor SpriteClassifierImpl::features(const torch::Tensor& x) {
  return feature_->forward(body_->forward(x).mean({2, 3}));  // global average pool
}

torch::Tensor SpriteClassifierImpl::forward(const torch::Tensor& x) { return head_->forward(features(x)); }

DataSplit SplitPerClass(const torch::Tensor& class_ids, int64_t num_classes, double held_out_fraction, uint64_t seed) {
  const torch::Tensor ids = class_ids.to(torch::kInt64).contiguous();
  const int64_t* p = ids.data_ptr<int64_t>();
  std::vector<std::vector<int64_t>> members(num_classes);
  for (int64_t i = 0; i < ids.numel(); ++i) members[p[i]].push_back(i);
  // mt19937_64's output is fixed by the standard; the shuffle is written out so that the
  // split does not depend on the standard library's distributions.
  std::mt19937_64 rng(seed);
  DataSplit split;
  for (auto& m : members) {
    for (size_t i = m.size(); i > 1; --i) std::swap(m[i - 1], m[rng() % i]);
    const int64_t n = static_cast<int64_t>(m.size());
    int64_t held = static_cast<int64_t>(std::llround(held_out_fraction * n));
    if (n >= 2) held = std::clamp<int64_t>(held, 1, n - 1);
    else held = 0;
    split.held_out.insert(split.held_out.end(), m.begin(), m.begin() + held);
    split.train.insert(split.train.end(), m.begin() + held, m.end());
  }
  std::sort(split.train.begin(), split.train.end());
  std::sort(split.held_out.begin(), split.held_out.end());
  return split;
}

SpriteClassifier TrainClassifier(const ClassifierConfig& config, const ClassifierTraining& training,
                                 const torch::Tensor& images, const torch::Tensor& class_ids,
                                 const std::vector<int64_t>& train, const std::function<void(const std::string&)>& log) {
  torch::manual_seed(training.seed);
  SpriteClassifier net(config);
  net->train();
  torch::Generator gen = at::detail::createCPUGenerator(training.seed + 1);
  const torch::Tensor index = torch::tensor(train, torch::kInt64);
  const torch::Tensor x_all = images.index_select(0, index);
  const torch::Tensor y_all = class_ids.to(torch::kInt64).index_select(0, index);
  const int64_t n = x_all.size(0);

  std::vector<double> counts(config.num_classes, 0.0);
  {
    auto acc = y_all.accessor<int64_t, 1>();
    for (int64_t i = 0; i < n; ++i) counts[acc[i]] += 1;
  }
  std::vector<float> weights(config.num_classes);
  double mean_weight = 0;
  for (int c = 0; c < config.num_classes; ++c) {
    weights[c] = static_cast<float>(counts[c] > 0 ? std::pow(counts[c], -training.balance) : 0.0);
    mean_weight += weights[c] * counts[c] / std::max<double>(1, n);
  }
  for (float& w : weights) w = static_cast<float>(w / std::max(mean_weight, 1e-12));
  const torch::Tensor class_weights = torch::tensor(weights, torch::kFloat32);

  torch::optim::Adam opt(net->parameters(), torch::optim::AdamOptions(training.lr).weight_decay(training.weight_decay));
  const int64_t batches = (n + training.batch_size - 1) / training.batch_size;
  const int64_t total_steps = std::max<int64_t>(1, batches * training.epochs);
  int64_t step = 0;
  for (int epoch = 0; epoch < training.epochs; ++epoch) {
    const torch::Tensor order = torch::randperm(n, gen, torch::kInt64);
    double loss_sum = 0;
    int64_t correct = 0;
    for (int64_t b = 0; b < batches; ++b) {
      const torch::Tensor rows = order.slice(0, b * training.batch_size, std::min(n, (b + 1) * training.batch_size));
      torch::Tensor x = x_all.index_select(0, rows);
      const torch::Tensor y = y_all.index_select(0, rows);
      if (training.flip) {
        const torch::Tensor flip = torch::rand({x.size(0)}, gen) < 0.5;
        x = torch::where(flip.view({-1, 1, 1, 1}), x.flip({3}), x);
      }
      const double lr = 0.5 * training.lr * (1 + std::cos(M_PI * static_cast<double>(step) / total_steps));
      for (auto& group : opt.param_groups()) static_cast<torch::optim::AdamOptions&>(group.options()).lr(lr);
      const torch::Tensor logits = net->forward(x);
      const torch::Tensor loss =
          torch::nn::functional::cross_entropy(logits, y, torch::nn::functional::CrossEntropyFuncOptions().weight(class_weights));
      opt.zero_grad();
      loss.backward();
      opt.step();
      ++step;
      loss_sum += loss.item<double>() * rows.size(0);
      correct += (logits.argmax(1) == y).sum().item<int64_t>();
    }
    if (log) {
      std::ostringstream line;
      line << "classifier epoch " << epoch + 1 << "/" << training.epochs << ": loss " << loss_sum / n
           << ", train accuracy " << static_cast<double>(correct) / n;
      log(line.str());
    }
  }
  net->eval();
  return net;
}

ClassifierOutput RunClassifier(SpriteClassifier& net, const torch::Tensor& images, int64_t chunk) {
  torch::NoGradGuard no_grad;
  net->eval();
  std::vector<torch::Tensor> feats, preds;
  for (int64_t start = 0; start < images.size(0); start += chunk) {
    const torch::Tensor x = images.slice(0, start, std::min(images.size(0), start + chunk)).to(torch::kFloat32);
    const torch::Tensor f = net->features(x);
    feats.push_back(f);
    preds.push_back(net->logits_from_features(f).argmax(1));
  }
  ClassifierOutput out;
  if (feats.empty()) {
    out.features = torch::zeros({0, net->config().feature_dim});
    out.predicted = torch::zeros({0}, torch::kInt64);
    return out;
  }
  out.features = torch::cat(feats);
  out.predicted = torch::cat(preds);
  return out;
}

}  // namespace spritediff
