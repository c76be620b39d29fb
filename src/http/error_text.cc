// Error texts: server messages extracted from answers, secrets scrubbed.
#include "error_text.h"

#include <algorithm>
#include <charconv>
#include <vector>

namespace bucketfs::http::detail {
namespace {

constexpr std::size_t kMaxMessage = 300;

void append_utf8(std::string& out, std::uint32_t code) {
  if (code < 0x80) {
    out += static_cast<char>(code);
  } else if (code < 0x800) {
    out += static_cast<char>(0xC0 | (code >> 6));
    out += static_cast<char>(0x80 | (code & 0x3F));
  } else if (code < 0x10000) {
    out += static_cast<char>(0xE0 | (code >> 12));
    out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (code >> 18));
    out += static_cast<char>(0x80 | ((code >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code & 0x3F));
  }
}

std::optional<std::uint32_t> hex4(std::string_view text, std::size_t at) {
  if (at + 4 > text.size()) return std::nullopt;
  std::uint32_t value = 0;
  auto [end, ec] = std::from_chars(text.data() + at, text.data() + at + 4, value, 16);
  if (ec != std::errc() || end != text.data() + at + 4) return std::nullopt;
  return value;
}

// Parses the JSON string starting at text[at] == '"'.
std::optional<std::string> parse_json_string(std::string_view text, std::size_t at) {
  if (at >= text.size() || text[at] != '"') return std::nullopt;
  std::string out;
  for (std::size_t i = at + 1; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '"') return out;
    if (c != '\\') {
      out += c;
      continue;
    }
    if (++i >= text.size()) return std::nullopt;
    switch (text[i]) {
      case '"': out += '"'; break;
      case '\\': out += '\\'; break;
      case '/': out += '/'; break;
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'n': out += '\n'; break;
      case 'r': out += '\r'; break;
      case 't': out += '\t'; break;
      case 'u': {
        auto code = hex4(text, i + 1);
        if (!code) return std::nullopt;
        i += 4;
        if (*code >= 0xD800 && *code < 0xDC00 && i + 2 < text.size() && text[i + 1] == '\\' && text[i + 2] == 'u') {
          if (auto low = hex4(text, i + 3); low && *low >= 0xDC00 && *low < 0xE000) {
            *code = 0x10000 + ((*code - 0xD800) << 10) + (*low - 0xDC00);
            i += 6;
          }
        }
        if (*code >= 0xD800 && *code < 0xE000) *code = 0xFFFD;
        append_utf8(out, *code);
        break;
      }
      default:
        return std::nullopt;
    }
  }
  return std::nullopt;
}

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

void replace_all(std::string& text, std::string_view secret) {
  if (secret.size() < 4) return;  // too short to be a secret; replacing would garble the text
  for (std::size_t at = text.find(secret); at != std::string::npos; at = text.find(secret, at + 3)) {
    text.replace(at, secret.size(), "***");
  }
}

bool credential_header(std::string_view name) {
  std::string lower(name);
  std::transform(lower.begin(), lower.end(), lower.begin(), [](char c) {
    return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
  });
  for (std::string_view word : {"auth", "token", "cookie", "key", "secret", "signature", "session"}) {
    if (lower.find(word) != std::string::npos) return true;
  }
  return false;
}

}  // namespace

std::optional<std::string> json_string_field(std::string_view json, std::string_view key) {
  const std::string quoted = "\"" + std::string(key) + "\"";
  for (std::size_t at = json.find(quoted); at != std::string_view::npos; at = json.find(quoted, at + 1)) {
    std::size_t i = at + quoted.size();
    while (i < json.size() && is_space(json[i])) ++i;
    if (i >= json.size() || json[i] != ':') continue;  // it was a value, not a key
    ++i;
    while (i < json.size() && is_space(json[i])) ++i;
    return parse_json_string(json, i);
  }
  return std::nullopt;
}

std::string error_message(const Headers& headers, std::string_view body) {
  if (auto header = headers.get("X-Error-Message"); header && !header->empty()) return std::string(*header);
  std::string_view trimmed = body;
  while (!trimmed.empty() && is_space(trimmed.front())) trimmed.remove_prefix(1);
  if (trimmed.starts_with('{')) {
    if (auto text = json_string_field(trimmed, "error")) return *text;
    if (auto text = json_string_field(trimmed, "message")) return *text;
    return "";
  }
  if (trimmed.empty() || trimmed.starts_with('<')) return "";  // nothing, or an HTML page
  return std::string(trimmed.substr(0, trimmed.find('\n')));
}

std::string scrub(std::string text, const Request& request) {
  // Credentials from the headers: the whole value and each word of it ("Bearer hf_...").
  for (const auto& [name, value] : request.headers) {
    if (!credential_header(name)) continue;
    replace_all(text, value);
    std::string_view rest = value;
    while (!rest.empty()) {
      const auto space = rest.find(' ');
      replace_all(text, rest.substr(0, space));
      if (space == std::string_view::npos) break;
      rest.remove_prefix(space + 1);
    }
  }
  // The query string and each of its values (signed URLs).
  std::string_view url = request.url;
  if (auto hash = url.find('#'); hash != std::string_view::npos) url = url.substr(0, hash);
  if (auto question = url.find('?'); question != std::string_view::npos) {
    std::string_view query = url.substr(question + 1);
    replace_all(text, query);
    while (!query.empty()) {
      const auto amp = query.find('&');
      std::string_view pair = query.substr(0, amp);
      if (auto eq = pair.find('='); eq != std::string_view::npos) replace_all(text, pair.substr(eq + 1));
      if (amp == std::string_view::npos) break;
      query.remove_prefix(amp + 1);
    }
  }
  for (char& c : text) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7F) c = ' ';
  }
  if (text.size() > kMaxMessage) {
    std::size_t cut = kMaxMessage;
    while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;  // not inside a UTF-8 character
    text.resize(cut);
    text += "...";
  }
  return text;
}

}  // namespace bucketfs::http::detail
