#include "server/auth.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <cctype>
#include <fstream>
#include <sstream>

#include "common/file_util.h"

namespace spritediff {

namespace {

constexpr size_t kMaxTokenBytes = 4096;
constexpr size_t kMaxEntries = 10000;

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string ToHex(const unsigned char* bytes, size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string out(2 * n, '0');
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = digits[bytes[i] >> 4];
    out[2 * i + 1] = digits[bytes[i] & 15];
  }
  return out;
}

std::array<unsigned char, 32> Sha256(const std::string& bytes) {
  std::array<unsigned char, 32> digest{};
  SHA256(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), digest.data());
  return digest;
}

}  // namespace

const char* RoleName(Role role) {
  switch (role) {
    case Role::kSample: return "sample";
    case Role::kTrain: return "train";
    case Role::kAdmin: return "admin";
  }
  return "?";
}

std::string Sha256Hex(const std::string& bytes) {
  const auto digest = Sha256(bytes);
  return ToHex(digest.data(), digest.size());
}

Result<std::string> NewToken() {
  unsigned char raw[32];
  if (RAND_bytes(raw, sizeof(raw)) != 1) return Status::Internal("OpenSSL's RAND_bytes failed");
  return ToHex(raw, sizeof(raw));
}

Result<TokenStore> TokenStore::Load(const std::string& path) {
  Result<std::string> text = ReadFileBounded(path, kMaxTextFileBytes, "a token file");
  if (!text.ok()) return text.status();
  return Parse(*text, path);
}

Result<TokenStore> TokenStore::Parse(const std::string& text, const std::string& where) {
  TokenStore store;
  std::istringstream lines(text);
  std::string line;
  int number = 0;
  while (std::getline(lines, line)) {
    ++number;
    const size_t hash_mark = line.find('#');
    if (hash_mark != std::string::npos) line.resize(hash_mark);
    std::istringstream fields(line);
    std::string role, hex;
    if (!(fields >> role)) continue;  // blank or comment
    const std::string at = where + ":" + std::to_string(number) + ": ";
    Entry e{};
    if (role == "sample") e.role = Role::kSample;
    else if (role == "train") e.role = Role::kTrain;
    else if (role == "admin") e.role = Role::kAdmin;
    else return Status::InvalidArgument(at + "role must be sample, train or admin");
    if (!(fields >> hex) || hex.size() != 64) {
      return Status::InvalidArgument(at + "expected '<role> <64 hex digits of sha256(token)> [name]'");
    }
    for (size_t i = 0; i < 32; ++i) {
      const int hi = HexValue(hex[2 * i]), lo = HexValue(hex[2 * i + 1]);
      if (hi < 0 || lo < 0) return Status::InvalidArgument(at + "the hash must be 64 hex digits");
      e.hash[i] = static_cast<unsigned char>(hi << 4 | lo);
    }
    if (store.entries_.size() >= kMaxEntries) return Status::InvalidArgument(where + ": more than 10000 tokens");
    store.entries_.push_back(e);
  }
  if (store.entries_.empty()) return Status::InvalidArgument(where + ": no tokens (an empty file would lock everyone out)");
  return store;
}

std::optional<Role> TokenStore::RoleOf(const std::string& token) const {
  if (token.empty() || token.size() > kMaxTokenBytes) return std::nullopt;
  const auto digest = Sha256(token);
  int matched = 0;  // the highest role among matches; every entry is compared
  for (const Entry& e : entries_) {
    const int equal = CRYPTO_memcmp(digest.data(), e.hash.data(), digest.size()) == 0;
    const int role = static_cast<int>(e.role);
    matched = (equal & (role > matched)) ? role : matched;
  }
  if (matched == 0) return std::nullopt;
  return static_cast<Role>(matched);
}

Authorizer::Authorizer(std::shared_ptr<const TokenStore> store) : source_(std::make_shared<Source>()) {
  source_->store = std::move(store);
}

Result<Authorizer> Authorizer::FromFile(const std::string& path) {
  Result<TokenStore> tokens = TokenStore::Load(path);
  if (!tokens.ok()) return tokens.status();
  Authorizer auth(std::make_shared<const TokenStore>(std::move(*tokens)));
  auth.source_->path = path;
  return auth;
}

Result<size_t> Authorizer::Reload() const {
  if (!source_ || source_->path.empty()) return Status::FailedPrecondition("no token file to reload");
  Result<TokenStore> tokens = TokenStore::Load(source_->path);
  if (!tokens.ok()) return tokens.status();
  const size_t n = tokens->size();
  auto store = std::make_shared<const TokenStore>(std::move(*tokens));
  std::lock_guard<std::mutex> lock(source_->mu);
  source_->store = std::move(store);
  return n;
}

std::shared_ptr<const TokenStore> Authorizer::Current() const {
  std::lock_guard<std::mutex> lock(source_->mu);
  return source_->store;
}

grpc::Status Authorizer::Check(const grpc::ServerContextBase& context, Role needed) const {
  if (!source_) return grpc::Status::OK;
  const std::shared_ptr<const TokenStore> store = Current();
  const auto& metadata = context.client_metadata();
  const auto found = metadata.find("authorization");
  const grpc::Status unauthenticated(grpc::StatusCode::UNAUTHENTICATED, kUnauthenticatedMessage);
  if (found == metadata.end() || metadata.count("authorization") != 1) return unauthenticated;
  const std::string value(found->second.data(), found->second.size());
  static const std::string kScheme = "bearer ";  // the scheme is case-insensitive (RFC 7235)
  if (value.size() <= kScheme.size()) return unauthenticated;
  for (size_t i = 0; i < kScheme.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(value[i])) != kScheme[i]) return unauthenticated;
  }
  const std::optional<Role> role = store->RoleOf(value.substr(kScheme.size()));
  if (!role) return unauthenticated;
  if (static_cast<int>(*role) < static_cast<int>(needed)) {
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED, kPermissionDeniedMessage);
  }
  return grpc::Status::OK;
}

}  // namespace spritediff
