#include "common/config.h"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <sstream>
#include <nlohmann/json.hpp>

#include "common/file_util.h"
#include "common/rule_text.h"

namespace spritediff {

using nlohmann::json;

namespace {

std::string ShownJson(const json& v) {
  std::string shown = v.dump();
  return shown.size() > 40 ? shown.substr(0, 40) + "..." : shown;
}

// The key's own rule, checked against a value the struct holds (after reading or flags).
Status CheckKey(const ConfigKey& key, const AppConfig& c) {
  const std::string name = key.name;
  if (const auto* p = std::get_if<std::string AppConfig::*>(&key.field)) {
    const std::string& v = c.**p;
    if (*key.choices != '\0') {
      const std::vector<std::string> items = SplitChoices(key.choices);
      if (std::find(items.begin(), items.end(), v) == items.end()) {
        return Status::InvalidArgument(name + " must be " + OrList(SplitChoices(key.choices)) + ", got '" + v.substr(0, 32) +
                                       "'");
      }
    } else if (v.size() < key.min) {
      return Status::InvalidArgument(name + " must not be empty");
    }
    return Status::Ok();
  }
  double v = 0;
  if (const auto* p = std::get_if<int AppConfig::*>(&key.field)) v = c.**p;
  if (const auto* p = std::get_if<int64_t AppConfig::*>(&key.field)) v = static_cast<double>(c.**p);
  if (const auto* p = std::get_if<double AppConfig::*>(&key.field)) v = c.**p;
  if (std::holds_alternative<bool AppConfig::*>(key.field)) return Status::Ok();
  if (!(v >= key.min && v <= key.max)) {  // NaN fails too
    std::string unit = *key.unit != '\0' && std::holds_alternative<double AppConfig::*>(key.field)
                           ? std::string(" ") + key.unit
                           : "";
    return Status::InvalidArgument(name + " must be in " + ConfigKeyRange(key) + unit + ", got " + FormatNumber(v));
  }
  return Status::Ok();
}

}  // namespace

Status AppConfig::Validate() const {
  for (const ConfigKey& key : ConfigKeys()) {
    Status s = CheckKey(key, *this);
    if (!s.ok()) return s;
  }
  if (max_rows_per_request > max_queued_rows) {
    return Status::InvalidArgument("max_rows_per_request (" + std::to_string(max_rows_per_request) +
                                   ") must not exceed max_queued_rows (" + std::to_string(max_queued_rows) +
                                   "): such a request could never be queued");
  }
  if (max_rows_per_request > max_batch_rows) {
    return Status::InvalidArgument("max_rows_per_request (" + std::to_string(max_rows_per_request) +
                                   ") must not exceed max_batch_rows (" + std::to_string(max_batch_rows) +
                                   "): a request's rows are stepped in one batch");
  }
  if (tls_cert_file.empty() != tls_key_file.empty()) {
    return Status::InvalidArgument("tls_cert_file and tls_key_file go together: set both or neither");
  }
  if (!tls_client_ca_file.empty() && tls_cert_file.empty()) {
    return Status::InvalidArgument("tls_client_ca_file needs tls_cert_file and tls_key_file");
  }
  return Status::Ok();
}

namespace {

bool IsLoopback(const std::string& host) {
  return host == "localhost" || host == "::1" || host == "[::1]" || host.rfind("127.", 0) == 0 ||
         host.rfind("unix:", 0) == 0;
}

// Reads one key's JSON value into its field: the JSON type must match the field's, and a number
// must fit the key's range (never narrowed silently: 1e12 into an int, 2.5 into 2).
Status ReadKey(const ConfigKey& key, const json& v, AppConfig& c) {
  const std::string name = key.name;
  auto refuse = [&](const std::string& rule) {
    return Status::InvalidArgument(name + " must be " + rule + ", got " + ShownJson(v));
  };
  if (const auto* p = std::get_if<std::string AppConfig::*>(&key.field)) {
    if (key.bool_or_auto) {
      if (v.is_boolean()) {
        c.**p = v.get<bool>() ? "true" : "false";
        return Status::Ok();
      }
      if (v.is_string() && v.get<std::string>() == "auto") {
        c.**p = "auto";
        return Status::Ok();
      }
      return refuse(ConfigKeyRule(key));
    }
    if (!v.is_string()) return refuse("a string");
    c.**p = v.get<std::string>();
    return Status::Ok();
  }
  if (const auto* p = std::get_if<bool AppConfig::*>(&key.field)) {
    if (!v.is_boolean()) return refuse("true or false");
    c.**p = v.get<bool>();
    return Status::Ok();
  }
  if (const auto* p = std::get_if<double AppConfig::*>(&key.field)) {
    if (!v.is_number()) return refuse("a number");
    c.**p = v.get<double>();
    return Status::Ok();
  }
  // A whole number, written as an integer or as a float with no fractional part (1e6), in range.
  const std::string rule = "a whole number in " + ConfigKeyRange(key);
  if (!v.is_number()) return refuse(rule);
  const double d = v.get<double>();
  if (v.is_number_float() && d != std::floor(d)) return refuse(rule);
  if (!(d >= key.min && d <= key.max)) return refuse(rule);
  // The range bounds the value well inside int64 (and int for int fields), so these are exact.
  const int64_t whole = v.is_number_unsigned()   ? static_cast<int64_t>(v.get<uint64_t>())
                        : v.is_number_integer() ? v.get<int64_t>()
                                                : static_cast<int64_t>(d);
  if (const auto* p = std::get_if<int AppConfig::*>(&key.field)) c.**p = static_cast<int>(whole);
  if (const auto* p = std::get_if<int64_t AppConfig::*>(&key.field)) c.**p = whole;
  return Status::Ok();
}

}  // namespace

std::string AppConfig::InsecurePublicRefusal() const {
  if (allow_insecure_public || IsLoopback(bind)) return "";
  std::string missing;
  if (tls_cert_file.empty()) missing = "TLS (tls_cert_file, tls_key_file)";
  if (auth_token_file.empty()) missing += std::string(missing.empty() ? "" : " and ") + "a token file (auth_token_file)";
  if (missing.empty()) return "";
  return "refusing to listen on non-loopback address " + bind + " without " + missing +
         "; set them, or set allow_insecure_public: true to accept the risk";
}

Result<AppConfig> ParseConfig(const std::string& text, const std::string& origin) {
  AppConfig c;
  json j;
  try {
    j = json::parse(text, /*cb=*/nullptr, /*allow_exceptions=*/true, /*ignore_comments=*/true);
  } catch (const json::exception& e) {
    return Status::InvalidArgument(origin + ": not JSON: " + e.what());
  }
  if (!j.is_object()) return Status::InvalidArgument(origin + ": config must be a JSON object");
  const std::vector<ConfigKey>& keys = ConfigKeys();
  for (const auto& item : j.items()) {
    if (item.key() == "comment") {  // older files carried their comment as a key
      if (!item.value().is_string()) return Status::InvalidArgument(origin + ": comment must be a string");
      continue;
    }
    const auto key = std::find_if(keys.begin(), keys.end(), [&](const ConfigKey& k) { return item.key() == k.name; });
    if (key == keys.end()) {
      return Status::InvalidArgument(origin + ": unknown key '" + item.key().substr(0, 64) +
                                     "' (every key: spritediffd config --defaults)");
    }
    Status read = ReadKey(*key, item.value(), c);
    if (!read.ok()) return Status::InvalidArgument(origin + ": " + read.message());
  }
  Status s = c.Validate();
  if (!s.ok()) return Status::InvalidArgument(origin + ": " + s.message());
  return c;
}

Result<AppConfig> LoadConfig(const std::string& path) {
  Result<std::string> text = ReadFileBounded(path, kMaxTextFileBytes, "a config file");
  if (!text.ok()) return text.status();
  return ParseConfig(*text, path);
}

ConfigFile FindConfigFile(const std::string& flag_path, const std::string& installed_path) {
  if (!flag_path.empty()) return {flag_path, "--config"};
  const char* env = std::getenv("SPRITEDIFF_CONFIG");
  if (env != nullptr && *env != '\0') return {env, "$SPRITEDIFF_CONFIG"};
  struct stat st {};
  if (::stat(installed_path.c_str(), &st) == 0) return {installed_path, "installed"};
  return {};
}

}  // namespace spritediff
