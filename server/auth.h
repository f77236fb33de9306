// Who may call what: bearer tokens from a file named by the config's auth_token_file. Each
// token has a role; a role includes the ones below it:
//   sample  the Sprites service (Sample, ListModels, GetModel)
//   train   also the Training service (SubmitJob, WatchJob, GetJob, ListJobs, CancelJob)
//   admin   everything (kept apart so operator-only calls can be added without new tokens)
// The file holds SHA-256 hashes, never tokens, one per line:
//   <role> <64 hex digits of sha256(token)> [free-text name]
// '#' starts a comment. Clients send `authorization: Bearer <token>`. A presented token is
// hashed and compared with every entry in constant time. Refusals carry no detail: a fixed
// UNAUTHENTICATED or PERMISSION_DENIED message. grpc.health.v1.Health stays open for probes.
#pragma once

#include <grpcpp/grpcpp.h>

#include <array>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"

namespace spritediff {

enum class Role { kSample = 1, kTrain = 2, kAdmin = 3 };

const char* RoleName(Role role);

// SHA-256 of bytes as 64 lowercase hex digits.
std::string Sha256Hex(const std::string& bytes);

// A fresh random token (32 bytes from OpenSSL's CSPRNG, hex).
Result<std::string> NewToken();

class TokenStore {
 public:
  // Parses the file (see above); an empty store (no entries) is an error, not "open".
  static Result<TokenStore> Load(const std::string& path);
  static Result<TokenStore> Parse(const std::string& text, const std::string& where);

  // The role of the token, or nullopt. Time does not depend on which entry matched.
  std::optional<Role> RoleOf(const std::string& token) const;
  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    Role role;
    std::array<unsigned char, 32> hash;
  };
  std::vector<Entry> entries_;
};

// Checks a call's metadata against the token file. With none (auth_token_file unset) every
// call passes: the daemon then only listens on loopback unless allow_insecure_public. Copies
// share one source, so Reload (SIGHUP) reaches every service at once.
class Authorizer {
 public:
  Authorizer() = default;
  explicit Authorizer(std::shared_ptr<const TokenStore> store);
  // Reads the token file; Reload re-reads it.
  static Result<Authorizer> FromFile(const std::string& path);
  // Re-reads the file named at FromFile; on any error the tokens in use stay. Returns the
  // number of tokens now in use, or the error.
  Result<size_t> Reload() const;

  // OK, or UNAUTHENTICATED (no/unknown/malformed token) or PERMISSION_DENIED (role too low).
  grpc::Status Check(const grpc::ServerContextBase& context, Role needed) const;
  bool enabled() const { return source_ != nullptr; }

 private:
  struct Source {
    std::string path;
    mutable std::mutex mu;
    std::shared_ptr<const TokenStore> store;  // GUARDED_BY(mu)
  };
  std::shared_ptr<const TokenStore> Current() const;
  std::shared_ptr<Source> source_;
};

// Both are the whole message: nothing about which token, which role, or why.
inline constexpr char kUnauthenticatedMessage[] = "missing or invalid credentials";
inline constexpr char kPermissionDeniedMessage[] = "these credentials may not call this method";

// A streaming call refused before it started.
template <typename Event>
class RefusedWriteReactor : public grpc::ServerWriteReactor<Event> {
 public:
  explicit RefusedWriteReactor(const grpc::Status& status) { this->Finish(status); }
  void OnDone() override { delete this; }
};

}  // namespace spritediff
