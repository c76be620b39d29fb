// discover_settings(): endpoint and token precedence, trimming, errors that never show a token.
#include "bucketfs/hub/settings.h"

#include <gtest/gtest.h>

#include <map>

namespace bucketfs::hub {
namespace {

struct FakeFiles {
  std::map<std::string, std::string> files;
  FileReader reader() const {
    return [this](const std::string& path) -> std::optional<std::string> {
      auto it = files.find(path);
      if (it == files.end()) return std::nullopt;
      return it->second;
    };
  }
};

TEST(Settings, EndpointPrecedenceAndTrailingSlash) {
  FakeFiles fs;
  auto plain = discover_settings({}, {}, fs.reader());
  ASSERT_TRUE(plain);
  EXPECT_EQ(plain->endpoint, "https://huggingface.co");

  Environment env{{"HF_ENDPOINT", " http://127.0.0.1:8080/ \n"}};
  auto from_env = discover_settings({}, env, fs.reader());
  ASSERT_TRUE(from_env);
  EXPECT_EQ(from_env->endpoint, "http://127.0.0.1:8080");

  SettingsOptions options;
  options.endpoint = "https://hub.example//";
  auto explicit_option = discover_settings(options, env, fs.reader());
  ASSERT_TRUE(explicit_option);
  EXPECT_EQ(explicit_option->endpoint, "https://hub.example");

  options.endpoint = "ftp://nope";
  auto bad = discover_settings(options, env, fs.reader());
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().kind, HubErrorKind::invalid);
}

TEST(Settings, TokenPrecedence) {
  FakeFiles fs;
  fs.files["/opt/explicit"] = "hf_explicit\n";
  fs.files["/t/path-token"] = "  hf_from_path  \n";
  fs.files["/hfhome/token"] = "hf_from_hf_home\n";
  fs.files["/home/u/.cache/huggingface/token"] = "hf_from_home\n";
  fs.files["/xdg/huggingface/token"] = "hf_from_xdg\n";

  Environment env{{"HF_TOKEN", "\thf_from_env\r\n"},
                  {"HF_TOKEN_PATH", "/t/path-token"},
                  {"HF_HOME", "/hfhome"},
                  {"XDG_CACHE_HOME", "/xdg"},
                  {"HOME", "/home/u"}};
  SettingsOptions options;
  options.token_file = "/opt/explicit";

  auto s = discover_settings(options, env, fs.reader());
  ASSERT_TRUE(s);
  EXPECT_EQ(s->token, "hf_explicit");
  EXPECT_EQ(s->token_origin, TokenOrigin::token_file_option);
  EXPECT_EQ(s->token_path, "/opt/explicit");

  s = discover_settings({}, env, fs.reader());
  ASSERT_TRUE(s);
  EXPECT_EQ(s->token, "hf_from_env");  // trimmed
  EXPECT_EQ(s->token_origin, TokenOrigin::env_hf_token);

  env["HF_TOKEN"] = "   ";  // empty after trimming: ignored
  s = discover_settings({}, env, fs.reader());
  ASSERT_TRUE(s);
  EXPECT_EQ(s->token, "hf_from_path");
  EXPECT_EQ(s->token_origin, TokenOrigin::env_hf_token_path);

  env.erase("HF_TOKEN_PATH");
  s = discover_settings({}, env, fs.reader());
  ASSERT_TRUE(s);
  EXPECT_EQ(s->token, "hf_from_hf_home");
  EXPECT_EQ(s->token_path, "/hfhome/token");
  EXPECT_EQ(s->token_origin, TokenOrigin::default_file);

  env.erase("HF_HOME");
  s = discover_settings({}, env, fs.reader());
  ASSERT_TRUE(s);
  EXPECT_EQ(s->token, "hf_from_xdg");

  env.erase("XDG_CACHE_HOME");
  s = discover_settings({}, env, fs.reader());
  ASSERT_TRUE(s);
  EXPECT_EQ(s->token, "hf_from_home");

  env["HF_TOKEN_PATH"] = "/missing";  // a missing implicit file is not an error: the search goes on
  s = discover_settings({}, env, fs.reader());
  ASSERT_TRUE(s);
  EXPECT_EQ(s->token, "hf_from_home");

  env.erase("HOME");
  s = discover_settings({}, env, fs.reader());
  ASSERT_TRUE(s);
  EXPECT_FALSE(s->token.has_value());
  EXPECT_EQ(s->token_origin, TokenOrigin::none);
}

TEST(Settings, ExplicitTokenFileMustBeReadableAndNonEmpty) {
  FakeFiles fs;
  fs.files["/empty"] = " \n";
  SettingsOptions options;
  options.token_file = "/nowhere/token";
  Environment env{{"HF_TOKEN", "hf_env_should_not_be_used"}};
  auto missing = discover_settings(options, env, fs.reader());
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message.find("/nowhere/token"), std::string::npos);

  options.token_file = "/empty";
  auto empty = discover_settings(options, env, fs.reader());
  ASSERT_FALSE(empty);
  EXPECT_NE(empty.error().message.find("empty"), std::string::npos);
}

TEST(Settings, BadTokenErrorDoesNotShowTheToken) {
  FakeFiles fs;
  fs.files["/t"] = "hf_secret part2\n";
  SettingsOptions options;
  options.token_file = "/t";
  auto bad = discover_settings(options, {}, fs.reader());
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().message.find("hf_secret"), std::string::npos) << bad.error().describe();
  EXPECT_EQ(bad.error().describe().find("part2"), std::string::npos);

  Environment env{{"HF_TOKEN", "hf_abc\x01xyz"}};
  auto control = discover_settings({}, env, fs.reader());
  ASSERT_FALSE(control);
  EXPECT_EQ(control.error().describe().find("hf_abc"), std::string::npos);
}

TEST(Settings, Trim) {
  EXPECT_EQ(trim("  a b \n"), "a b");
  EXPECT_EQ(trim(" \t\n"), "");
  EXPECT_EQ(trim("x"), "x");
}

}  // namespace
}  // namespace bucketfs::hub
