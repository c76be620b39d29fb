#include "bucketfs/hub/settings.h"

#include <fstream>
#include <iterator>

extern char** environ;

namespace bucketfs::hub {
namespace {

std::optional<std::string> env_value(const Environment& environment, std::string_view name) {
  auto it = environment.find(name);
  if (it == environment.end()) return std::nullopt;
  return it->second;
}

// A usable token value, or the reason it is not one (never quoting the value).
std::optional<std::string> token_problem(std::string_view token) {
  for (unsigned char c : token) {
    if (c <= 0x20 || c == 0x7f) return "contains whitespace or control characters";
  }
  return std::nullopt;
}

}  // namespace

std::string_view to_string(TokenOrigin origin) {
  switch (origin) {
    case TokenOrigin::none: return "anonymous";
    case TokenOrigin::token_file_option: return "--token-file";
    case TokenOrigin::env_hf_token: return "$HF_TOKEN";
    case TokenOrigin::env_hf_token_path: return "$HF_TOKEN_PATH";
    case TokenOrigin::default_file: return "the token file";
  }
  return "?";
}

std::string_view trim(std::string_view text) {
  constexpr std::string_view kSpace = " \t\r\n\f\v";
  const auto first = text.find_first_not_of(kSpace);
  if (first == std::string_view::npos) return {};
  const auto last = text.find_last_not_of(kSpace);
  return text.substr(first, last - first + 1);
}

HubResult<HubSettings> discover_settings(const SettingsOptions& options, const Environment& environment,
                                         const FileReader& read_file) {
  HubSettings settings;

  // Endpoint.
  std::string endpoint(kDefaultEndpoint);
  if (options.endpoint && !trim(*options.endpoint).empty()) {
    endpoint = std::string(trim(*options.endpoint));
  } else if (auto value = env_value(environment, "HF_ENDPOINT"); value && !trim(*value).empty()) {
    endpoint = std::string(trim(*value));
  }
  while (!endpoint.empty() && endpoint.back() == '/') endpoint.pop_back();
  if (!endpoint.starts_with("http://") && !endpoint.starts_with("https://")) {
    return make_hub_error(HubErrorKind::invalid, "endpoint '" + endpoint + "' must start with http:// or https://");
  }
  settings.endpoint = std::move(endpoint);

  auto accept = [&](std::string_view raw, TokenOrigin origin, std::string path) -> HubResult<bool> {
    const auto token = trim(raw);
    if (token.empty()) return false;
    if (auto problem = token_problem(token)) {
      std::string where = path.empty() ? std::string(to_string(origin)) : path;
      return make_hub_error(HubErrorKind::invalid, "the token in " + where + " " + *problem);
    }
    settings.token = std::string(token);
    settings.token_origin = origin;
    settings.token_path = std::move(path);
    return true;
  };

  // Token: explicit file.
  if (options.token_file) {
    auto contents = read_file(*options.token_file);
    if (!contents) return make_hub_error(HubErrorKind::invalid, "cannot read token file " + *options.token_file);
    auto taken = accept(*contents, TokenOrigin::token_file_option, *options.token_file);
    if (!taken) return std::unexpected(taken.error());
    if (!*taken) return make_hub_error(HubErrorKind::invalid, "token file " + *options.token_file + " is empty");
    return settings;
  }
  // $HF_TOKEN.
  if (auto value = env_value(environment, "HF_TOKEN")) {
    auto taken = accept(*value, TokenOrigin::env_hf_token, "");
    if (!taken) return std::unexpected(taken.error());
    if (*taken) return settings;
  }
  // $HF_TOKEN_PATH.
  if (auto path = env_value(environment, "HF_TOKEN_PATH"); path && !trim(*path).empty()) {
    const std::string file(trim(*path));
    if (auto contents = read_file(file)) {
      auto taken = accept(*contents, TokenOrigin::env_hf_token_path, file);
      if (!taken) return std::unexpected(taken.error());
      if (*taken) return settings;
    }
  }
  // The file the hf CLI writes.
  std::string file;
  if (auto home = env_value(environment, "HF_HOME"); home && !trim(*home).empty()) {
    file = std::string(trim(*home)) + "/token";
  } else if (auto cache = env_value(environment, "XDG_CACHE_HOME"); cache && !trim(*cache).empty()) {
    file = std::string(trim(*cache)) + "/huggingface/token";
  } else if (auto user_home = env_value(environment, "HOME"); user_home && !trim(*user_home).empty()) {
    file = std::string(trim(*user_home)) + "/.cache/huggingface/token";
  }
  if (!file.empty()) {
    if (auto contents = read_file(file)) {
      auto taken = accept(*contents, TokenOrigin::default_file, file);
      if (!taken) return std::unexpected(taken.error());
      if (*taken) return settings;
    }
  }
  return settings;  // anonymous
}

Environment process_environment() {
  Environment out;
  for (char** entry = environ; entry && *entry; ++entry) {
    std::string_view text(*entry);
    const auto eq = text.find('=');
    if (eq == std::string_view::npos) continue;
    out.emplace(std::string(text.substr(0, eq)), std::string(text.substr(eq + 1)));
  }
  return out;
}

std::optional<std::string> read_small_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::string contents;
  char buffer[4096];
  while (in.read(buffer, sizeof buffer) || in.gcount() > 0) {
    contents.append(buffer, static_cast<std::size_t>(in.gcount()));
    if (contents.size() > (64u << 10)) return std::nullopt;
  }
  if (in.bad()) return std::nullopt;
  return contents;
}

}  // namespace bucketfs::hub
