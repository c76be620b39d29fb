#pragma once
// Where the Hub is and who we are: the endpoint and the Hub token, discovered the way the `hf`
// CLI and huggingface_hub do (issue 4, "Talking to the Hub").
//
//   endpoint: explicit option, else $HF_ENDPOINT, else https://huggingface.co. Trailing '/' removed.
//   token:    explicit token file option, else $HF_TOKEN, else the file named by $HF_TOKEN_PATH,
//             else $HF_HOME/token when HF_HOME is set, else $XDG_CACHE_HOME/huggingface/token when
//             that is set, else ~/.cache/huggingface/token (HOME), else anonymous.
//   Values are trimmed of surrounding whitespace (files end in '\n'); an empty value counts as
//   absent and the search goes on. A missing implicit token file means "no token there"; a missing
//   or unreadable EXPLICIT token file is an error, as is a token with inner whitespace or control
//   characters (it cannot go in an Authorization header).
//
// discover_settings() is pure: the environment and the file system come in as arguments, so
// tests need neither. Errors name the file or variable, never the token. HubSettings::token is a
// secret: never print or log it; HubSettings has no printing helpers on purpose.

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "bucketfs/hub/error.h"

namespace bucketfs::hub {

inline constexpr std::string_view kDefaultEndpoint = "https://huggingface.co";

enum class TokenOrigin { none, token_file_option, env_hf_token, env_hf_token_path, default_file };

// "anonymous", "--token-file", "$HF_TOKEN", "$HF_TOKEN_PATH", "the token file": for messages.
std::string_view to_string(TokenOrigin origin);

struct HubSettings {
  std::string endpoint;              // no trailing '/'
  std::optional<std::string> token;  // SECRET. nullopt: anonymous
  TokenOrigin token_origin = TokenOrigin::none;
  std::string token_path;  // the file the token came from, when it came from one
};

struct SettingsOptions {
  std::optional<std::string> endpoint;    // --endpoint
  std::optional<std::string> token_file;  // --token-file
};

using Environment = std::map<std::string, std::string, std::less<>>;
// The contents of the file at `path`, or nullopt when it cannot be read.
using FileReader = std::function<std::optional<std::string>(const std::string& path)>;

// Errors are HubErrorKind::invalid.
HubResult<HubSettings> discover_settings(const SettingsOptions& options, const Environment& environment,
                                         const FileReader& read_file);

// The process environment as an Environment, and a FileReader over the real file system (files
// above 64 KiB are refused: a token file is small).
Environment process_environment();
std::optional<std::string> read_small_file(const std::string& path);

// `text` without leading and trailing ASCII whitespace.
std::string_view trim(std::string_view text);

}  // namespace bucketfs::hub
