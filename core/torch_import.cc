#include "core/torch_import.h"

#include <caffe2/serialize/inline_container.h>

#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>

namespace spritediff {

namespace {

// A Python value as far as a state_dict pickle needs it.
struct PyValue {
  enum class Kind { kNone, kBool, kInt, kFloat, kString, kTuple, kList, kDict, kGlobal, kStorage, kTensor };
  Kind kind = Kind::kNone;
  int64_t i = 0;
  double f = 0;
  std::string s;                               // string, global "module.name", storage key
  std::vector<std::shared_ptr<PyValue>> items; // tuple/list; dict as k0, v0, k1, v1, ...
  torch::ScalarType dtype = torch::kFloat32;   // storage
  torch::Tensor tensor;
};
using PyPtr = std::shared_ptr<PyValue>;

PyPtr Make(PyValue::Kind kind) {
  auto v = std::make_shared<PyValue>();
  v->kind = kind;
  return v;
}

class ParseError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

Result<torch::ScalarType> StorageType(const std::string& global) {
  static const std::map<std::string, torch::ScalarType> types = {
      {"torch.FloatStorage", torch::kFloat32}, {"torch.DoubleStorage", torch::kFloat64},
      {"torch.HalfStorage", torch::kFloat16},  {"torch.BFloat16Storage", torch::kBFloat16},
      {"torch.LongStorage", torch::kInt64},    {"torch.IntStorage", torch::kInt32},
      {"torch.ShortStorage", torch::kInt16},   {"torch.CharStorage", torch::kInt8},
      {"torch.ByteStorage", torch::kUInt8},    {"torch.BoolStorage", torch::kBool},
  };
  auto it = types.find(global);
  if (it == types.end()) return Status::InvalidArgument("unsupported storage type " + global);
  return it->second;
}

// Reads the pickle opcodes a state_dict uses (protocol 2-4).
class Unpickler {
 public:
  Unpickler(const std::string& data, caffe2::serialize::PyTorchStreamReader& reader) : data_(data), reader_(reader) {}

  PyPtr Load() {
    while (true) {
      const uint8_t op = Byte();
      switch (op) {
        case 0x80: Byte(); break;                      // PROTO
        case 0x95: Bytes(8); break;                    // FRAME
        case '.': return Pop();                        // STOP
        case '}': Push(Make(PyValue::Kind::kDict)); break;
        case ']': Push(Make(PyValue::Kind::kList)); break;
        case ')': Push(Make(PyValue::Kind::kTuple)); break;
        case '(': marks_.push_back(stack_.size()); break;
        case 'N': Push(Make(PyValue::Kind::kNone)); break;
        case 0x88: case 0x89: {                        // NEWTRUE, NEWFALSE
          PyPtr v = Make(PyValue::Kind::kBool);
          v->i = op == 0x88;
          Push(v);
          break;
        }
        case 'J': PushInt(static_cast<int32_t>(Le(4))); break;
        case 'K': PushInt(Le(1)); break;
        case 'M': PushInt(Le(2)); break;
        case 0x8a: {                                   // LONG1
          const size_t n = Le(1);
          int64_t v = static_cast<int64_t>(Le(n));
          if (n > 0 && n < 8 && (v >> (8 * n - 1)) & 1) v -= int64_t{1} << (8 * n);
          PushInt(v);
          break;
        }
        case 'G': {                                    // BINFLOAT, big-endian double
          uint64_t bits = 0;
          for (int k = 0; k < 8; ++k) bits = (bits << 8) | Byte();
          PyPtr v = Make(PyValue::Kind::kFloat);
          std::memcpy(&v->f, &bits, 8);
          Push(v);
          break;
        }
        case 'X': PushString(Bytes(Le(4))); break;     // BINUNICODE
        case 0x8c: PushString(Bytes(Le(1))); break;    // SHORT_BINUNICODE
        case 'T': PushString(Bytes(Le(4))); break;     // BINSTRING
        case 'U': PushString(Bytes(Le(1))); break;     // SHORT_BINSTRING
        case 'q': memo_[Le(1)] = Top(); break;         // BINPUT
        case 'r': memo_[Le(4)] = Top(); break;         // LONG_BINPUT
        case 0x94: memo_[memo_.size()] = Top(); break; // MEMOIZE
        case 'h': Push(Memo(Le(1))); break;            // BINGET
        case 'j': Push(Memo(Le(4))); break;            // LONG_BINGET
        case 'c': {                                    // GLOBAL "module\nname\n"
          const std::string module = Line(), name = Line();
          PushGlobal(module + "." + name);
          break;
        }
        case 0x93: {                                   // STACK_GLOBAL
          PyPtr name = Pop(), module = Pop();
          PushGlobal(module->s + "." + name->s);
          break;
        }
        case 't': {                                    // TUPLE
          PyPtr t = Make(PyValue::Kind::kTuple);
          t->items = PopToMark();
          Push(t);
          break;
        }
        case 0x85: case 0x86: case 0x87: {             // TUPLE1..3
          PyPtr t = Make(PyValue::Kind::kTuple);
          t->items.resize(op - 0x84);
          for (size_t k = t->items.size(); k-- > 0;) t->items[k] = Pop();
          Push(t);
          break;
        }
        case 'a': {                                    // APPEND
          PyPtr v = Pop();
          Top()->items.push_back(v);
          break;
        }
        case 'e': {                                    // APPENDS
          auto items = PopToMark();
          for (auto& v : items) Top()->items.push_back(v);
          break;
        }
        case 's': {                                    // SETITEM
          PyPtr v = Pop(), k = Pop();
          Top()->items.push_back(k);
          Top()->items.push_back(v);
          break;
        }
        case 'u': {                                    // SETITEMS
          auto items = PopToMark();
          if (items.size() % 2) throw ParseError("odd SETITEMS");
          for (auto& v : items) Top()->items.push_back(v);
          break;
        }
        case 'Q': Push(PersistentLoad(Pop())); break;  // BINPERSID
        case 'R': {                                    // REDUCE
          PyPtr args = Pop(), fn = Pop();
          Push(Reduce(fn, args));
          break;
        }
        case 'b': Pop(); break;                        // BUILD: state (e.g. OrderedDict._metadata) is not needed
        default: {
          char hex[8];
          std::snprintf(hex, sizeof(hex), "0x%02x", op);
          throw ParseError(std::string("unsupported pickle opcode ") + hex + " at byte " + std::to_string(pos_ - 1));
        }
      }
    }
  }

 private:
  uint8_t Byte() {
    if (pos_ >= data_.size()) throw ParseError("pickle ends early");
    return static_cast<uint8_t>(data_[pos_++]);
  }
  uint64_t Le(size_t n) {
    uint64_t v = 0;
    for (size_t k = 0; k < n; ++k) v |= static_cast<uint64_t>(Byte()) << (8 * k);
    return v;
  }
  std::string Bytes(size_t n) {
    if (n > data_.size() - pos_) throw ParseError("pickle ends early");
    std::string s = data_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  std::string Line() {
    const size_t end = data_.find('\n', pos_);
    if (end == std::string::npos) throw ParseError("pickle ends early");
    std::string s = data_.substr(pos_, end - pos_);
    pos_ = end + 1;
    return s;
  }
  void Push(PyPtr v) { stack_.push_back(std::move(v)); }
  void PushInt(int64_t i) {
    PyPtr v = Make(PyValue::Kind::kInt);
    v->i = i;
    Push(v);
  }
  void PushString(std::string s) {
    PyPtr v = Make(PyValue::Kind::kString);
    v->s = std::move(s);
    Push(v);
  }
  void PushGlobal(std::string name) {
    PyPtr v = Make(PyValue::Kind::kGlobal);
    v->s = std::move(name);
    Push(v);
  }
  PyPtr Pop() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back())) throw ParseError("pickle stack underflow");
    PyPtr v = stack_.back();
    stack_.pop_back();
    return v;
  }
  PyPtr Top() {
    if (stack_.empty()) throw ParseError("pickle stack underflow");
    return stack_.back();
  }
  PyPtr Memo(uint64_t k) {
    auto it = memo_.find(k);
    if (it == memo_.end()) throw ParseError("pickle refers to an unknown memo entry");
    return it->second;
  }
  std::vector<PyPtr> PopToMark() {
    if (marks_.empty()) throw ParseError("pickle MARK missing");
    const size_t mark = marks_.back();
    marks_.pop_back();
    std::vector<PyPtr> items(stack_.begin() + static_cast<std::ptrdiff_t>(mark), stack_.end());
    stack_.resize(mark);
    return items;
  }

  // ('storage', <storage type>, key, location, numel)
  PyPtr PersistentLoad(const PyPtr& pid) {
    if (pid->kind != PyValue::Kind::kTuple || pid->items.size() < 5 || pid->items[0]->s != "storage") {
      throw ParseError("unexpected persistent id in the pickle");
    }
    Result<torch::ScalarType> type = StorageType(pid->items[1]->s);
    if (!type.ok()) throw ParseError(type.status().message());
    const std::string key = pid->items[2]->s;
    auto cached = storages_.find(key);
    if (cached != storages_.end()) return cached->second;
    const std::string record = "data/" + key;
    if (!reader_.hasRecord(record)) throw ParseError("storage record " + record + " is missing");
    auto [ptr, size] = reader_.getRecord(record);
    const int64_t item = static_cast<int64_t>(c10::elementSize(*type));
    PyPtr storage = Make(PyValue::Kind::kStorage);
    storage->dtype = *type;
    storage->tensor = torch::from_blob(ptr.get(), {static_cast<int64_t>(size) / item}, *type).clone();
    storages_[key] = storage;
    return storage;
  }

  std::vector<int64_t> Ints(const PyPtr& tuple) {
    std::vector<int64_t> out;
    for (const auto& v : tuple->items) out.push_back(v->i);
    return out;
  }

  PyPtr Reduce(const PyPtr& fn, const PyPtr& args) {
    if (fn->kind != PyValue::Kind::kGlobal) throw ParseError("REDUCE of a non-global");
    if (fn->s == "collections.OrderedDict") return Make(PyValue::Kind::kDict);
    if (fn->s == "torch._utils._rebuild_tensor_v2" || fn->s == "torch._utils._rebuild_tensor") {
      if (args->items.size() < 4 || args->items[0]->kind != PyValue::Kind::kStorage) {
        throw ParseError("malformed tensor in the pickle");
      }
      const torch::Tensor& storage = args->items[0]->tensor;
      const int64_t offset = args->items[1]->i;
      const std::vector<int64_t> size = Ints(args->items[2]), stride = Ints(args->items[3]);
      int64_t last = offset;
      for (size_t k = 0; k < size.size(); ++k) last += (size[k] - 1) * stride[k];
      if (offset < 0 || last >= storage.numel() + (size.empty() ? 1 : 0)) {
        throw ParseError("a tensor reaches past its storage (truncated file?)");
      }
      PyPtr t = Make(PyValue::Kind::kTensor);
      t->tensor = storage.as_strided(size, stride, offset).clone();
      return t;
    }
    if (fn->s == "torch._utils._rebuild_parameter") {
      if (args->items.empty() || args->items[0]->kind != PyValue::Kind::kTensor) throw ParseError("malformed parameter");
      return args->items[0];
    }
    throw ParseError("the pickle calls " + fn->s + ": not a state_dict (save model.state_dict(), not the model)");
  }

  const std::string& data_;
  caffe2::serialize::PyTorchStreamReader& reader_;
  size_t pos_ = 0;
  std::vector<PyPtr> stack_;
  std::vector<size_t> marks_;
  std::map<uint64_t, PyPtr> memo_;
  std::map<std::string, PyPtr> storages_;
};

}  // namespace

Result<StateDict> ReadTorchStateDict(const std::string& path) {
  std::ifstream probe(path, std::ios::binary);
  if (!probe) return Status::NotFound(path + ": cannot open");
  char magic[4] = {0};
  probe.read(magic, 4);
  if (probe.gcount() < 4) return Status::InvalidArgument(path + ": too short to be a PyTorch checkpoint");
  if (std::memcmp(magic, "PK\x03\x04", 4) != 0) {
    if (static_cast<uint8_t>(magic[0]) == 0x80) {
      return Status::InvalidArgument(path + ": a legacy (pre-1.6, non-zip) PyTorch file; re-save it with "
                                            "torch.save(state_dict, path) from PyTorch >= 1.6");
    }
    return Status::InvalidArgument(path + ": not a PyTorch checkpoint (no zip header)");
  }
  try {
    caffe2::serialize::PyTorchStreamReader reader(path);
    if (!reader.hasRecord("data.pkl")) return Status::InvalidArgument(path + ": zip without data.pkl; not a torch.save file");
    auto [ptr, size] = reader.getRecord("data.pkl");
    const std::string pickle(static_cast<const char*>(ptr.get()), size);
    Unpickler unpickler(pickle, reader);
    PyPtr root = unpickler.Load();
    if (root->kind != PyValue::Kind::kDict) {
      return Status::InvalidArgument(path + ": the pickle is not a dict of tensors (a state_dict)");
    }
    StateDict state;
    for (size_t k = 0; k + 1 < root->items.size(); k += 2) {
      const PyPtr& key = root->items[k];
      const PyPtr& value = root->items[k + 1];
      if (key->kind != PyValue::Kind::kString || value->kind != PyValue::Kind::kTensor) {
        return Status::InvalidArgument(path + ": entry " + std::to_string(k / 2) +
                                       " is not name -> tensor; wrapped checkpoints ({'model': ...}) are not supported");
      }
      state.emplace_back(key->s, value->tensor);
    }
    return state;
  } catch (const ParseError& e) {
    return Status::InvalidArgument(path + ": " + e.what());
  } catch (const c10::Error& e) {
    return Status::InvalidArgument(path + ": unreadable PyTorch zip (truncated or corrupt): " + e.what_without_backtrace());
  }
}

Result<ImportResult> ImportStateDict(const StateDict& state, const ImportOptions& options) {
  ImportResult result;
  ModelInfo& info = result.model.info;
  info.name = options.name;
  info.labels = options.labels;
  info.arch.n_feat = options.n_feat;
  info.arch.height = options.height;
  info.arch.n_cfeat = static_cast<int>(options.labels.size());
  Status valid = ValidateModelInfo(info);
  if (!valid.ok()) return valid;

  torch::manual_seed(0);
  result.model.net = ContextUnet(info.arch);
  auto params = result.model.net->named_parameters();
  auto buffers = result.model.net->named_buffers();
  std::set<std::string> assigned;
  std::vector<std::string> unexpected, mismatched;
  std::set<std::string> prefixes;
  torch::NoGradGuard no_grad;
  for (const auto& [raw, tensor] : state) {
    std::string name = raw;
    for (const char* prefix : {"module.", "nn_model.", "model."}) {
      if (name.rfind(prefix, 0) == 0 && !params.contains(name) && !buffers.contains(name)) {
        prefixes.insert(prefix);
        name = name.substr(std::strlen(prefix));
      }
    }
    torch::Tensor* target = params.find(name);
    if (target == nullptr) target = buffers.find(name);
    if (target == nullptr) {
      unexpected.push_back(raw);
      continue;
    }
    if (target->sizes() != tensor.sizes()) {
      mismatched.push_back(raw + " is " + ShapeString(tensor) + ", expected " + ShapeString(*target));
      continue;
    }
    target->copy_(tensor.to(target->scalar_type()));
    assigned.insert(name);
  }
  std::vector<std::string> missing;
  std::vector<std::string> zeroed;
  for (auto& p : params) {
    if (assigned.count(p.key())) continue;
    if (p.key().find(".shortcut.") != std::string::npos) {
      p.value().zero_();
      zeroed.push_back(p.key());
    } else {
      missing.push_back(p.key());
    }
  }
  for (auto& b : buffers) {
    if (!assigned.count(b.key()) && b.key().find("num_batches_tracked") == std::string::npos) missing.push_back(b.key());
  }
  if (!unexpected.empty() || !mismatched.empty() || !missing.empty()) {
    std::string msg = "the checkpoint does not fit ContextUnet(n_feat=" + std::to_string(options.n_feat) +
                      ", n_cfeat=" + std::to_string(info.arch.n_cfeat) + ", height=" + std::to_string(options.height) + ")";
    auto list = [&](const char* what, const std::vector<std::string>& items) {
      if (items.empty()) return;
      msg += std::string("; ") + what + ":";
      for (size_t k = 0; k < items.size() && k < 10; ++k) msg += (k ? ", " : " ") + items[k];
      if (items.size() > 10) msg += ", and " + std::to_string(items.size() - 10) + " more";
    };
    list("shape mismatches", mismatched);
    list("unexpected keys", unexpected);
    list("missing keys", missing);
    return Status::InvalidArgument(msg);
  }
  for (const std::string& p : prefixes) result.notes.push_back("dropped the name prefix '" + p + "'");
  if (!zeroed.empty()) {
    std::string names;
    for (const auto& z : zeroed) names += (names.empty() ? "" : ", ") + z;
    result.notes.push_back(
        "no weights for " + names +
        ": the course's residual block draws a fresh zero-mean random 1x1 conv on every call, so its expected "
        "contribution is zero; the shortcut is imported as zeros");
  }
  result.model.net->eval();
  return result;
}

}  // namespace spritediff
