#include "bucketfs/hub/xet_token.h"

namespace bucketfs::hub {

XetTokenSource::XetTokenSource(const HubClient& hub, naming::BucketId bucket, XetTokenOptions options)
    : hub_(hub), bucket_(std::move(bucket)), options_(std::move(options)) {
  if (!options_.now_s) {
    options_.now_s = [] {
      return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
          .count();
    };
  }
}

bool XetTokenSource::usable(const XetCredentials& credentials) const {
  return credentials.exp - options_.now_s() > options_.refresh_margin.count();
}

HubResult<XetCredentials> XetTokenSource::get(const http::CancellationToken* cancel) {
  std::unique_lock lock(mutex_);
  while (true) {
    if (cached_ && usable(*cached_)) return *cached_;
    if (!fetching_) break;
    // Someone is fetching: share its result, good or bad.
    const std::uint64_t waited_for = generation_;
    fetched_.wait(lock, [&] { return generation_ != waited_for; });
    if (cached_ && usable(*cached_)) return *cached_;
    if (last_error_) return std::unexpected(*last_error_);
    // The new token is already too close to expiry (a margin longer than the server's lifetime):
    // use it anyway rather than fetch in a loop.
    if (cached_) return *cached_;
  }
  fetching_ = true;
  ++fetches_;
  lock.unlock();
  auto fetched = hub_.xet_token(bucket_, options_.write, cancel);
  lock.lock();
  fetching_ = false;
  ++generation_;
  if (fetched) {
    cached_ = XetCredentials{std::move(fetched->access_token), fetched->exp, std::move(fetched->cas_url)};
    last_error_.reset();
  } else {
    last_error_ = fetched.error();
  }
  fetched_.notify_all();
  if (!fetched) return std::unexpected(*last_error_);
  return *cached_;
}

void XetTokenSource::invalidate(const std::string& rejected) {
  std::lock_guard lock(mutex_);
  if (cached_ && cached_->access_token == rejected) cached_.reset();
}

std::uint64_t XetTokenSource::fetch_count() const {
  std::lock_guard lock(mutex_);
  return fetches_;
}

}  // namespace bucketfs::hub
