#include "bucketfs/cache/journal.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <map>

#include "format.h"
#include "temp_dir.h"

namespace bucketfs::cache {
namespace {

JournalRecord record(const std::string& name, const std::string& path) {
  JournalRecord r;
  r.staging_name = name;
  r.bucket = "alice/ckpts";
  r.path = path;
  r.base = xet::chunk_hash(xet::as_byte_span(std::string("base of ") + path));
  r.mtime_ms = 1'700'000'000'123;
  r.size = 12345;
  r.owner = Owner::self();
  return r;
}

TEST(JournalTest, PutListRemoveSurviveReopen) {
  bucketfs::testing::TempDir temp("bucketfs-journal-test");
  {
    auto store = NodeStore::open(temp.path());
    ASSERT_TRUE(store) << store.error().message;
    Journal journal(*store);
    ASSERT_TRUE(journal.put(record("f1", "run/step-1/model.bin")));
    auto second = record("f2", "run/step-1/optim.bin");
    second.base.reset();
    ASSERT_TRUE(journal.put(second));
    ASSERT_TRUE(journal.put(record("f1", "run/step-2/model.bin")));  // replaces (a rename)
    ASSERT_TRUE(journal.remove("absent"));
  }
  auto store = NodeStore::open(temp.path());
  ASSERT_TRUE(store);
  Journal journal(*store);
  auto listed = journal.list();
  ASSERT_TRUE(listed) << listed.error().message;
  ASSERT_EQ(listed->size(), 2u);
  EXPECT_EQ((*listed)[0].staging_name, "f1");
  EXPECT_EQ((*listed)[0].path, "run/step-2/model.bin");
  EXPECT_EQ((*listed)[0].base, record("f1", "run/step-2/model.bin").base);
  EXPECT_EQ((*listed)[0].mtime_ms, 1'700'000'000'123);
  EXPECT_EQ((*listed)[0].size, 12345u);
  EXPECT_EQ((*listed)[0].owner, Owner::self());
  EXPECT_FALSE((*listed)[1].base.has_value());
  ASSERT_TRUE(journal.remove("f1"));
  listed = journal.list();
  ASSERT_TRUE(listed);
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].staging_name, "f2");
}

TEST(JournalTest, AlsoBasesRoundTripAndAreOptional) {
  auto with = record("f1", "latest.bin");
  with.also_bases = {xet::chunk_hash(xet::as_byte_span(std::string("b"))),
                     xet::chunk_hash(xet::as_byte_span(std::string("c")))};
  auto decoded = decode_journal_record("f1", encode_journal_record(with));
  ASSERT_TRUE(decoded) << decoded.error().message;
  EXPECT_EQ(decoded->also_bases, with.also_bases);
  const auto without = encode_journal_record(record("f2", "x"));
  EXPECT_EQ(without.find("also_bases"), std::string::npos);  // records as before the field existed
  decoded = decode_journal_record("f2", without);
  ASSERT_TRUE(decoded);
  EXPECT_TRUE(decoded->also_bases.empty());
  auto bad = decode_journal_record("f3", R"({"bucket":"a/b","path":"p","mtime_ms":1,"size":1,)"
                                         R"("owner":{"pid":1,"start":1,"boot":"x"},"also_bases":["zz"]})");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("f3"), std::string::npos);
}

TEST(JournalTest, RemoveManyDropsTheNamedRecordsOnly) {
  bucketfs::testing::TempDir temp("bucketfs-journal-test");
  {
    auto store = NodeStore::open(temp.path());
    ASSERT_TRUE(store) << store.error().message;
    Journal journal(*store);
    for (int i = 0; i < 6; ++i) ASSERT_TRUE(journal.put(record("f" + std::to_string(i), "p" + std::to_string(i))));
    const std::vector<std::string> names = {"f1", "absent", "f4", "f2"};
    ASSERT_TRUE(journal.remove_many(names));
    ASSERT_TRUE(journal.remove_many(std::vector<std::string>{"absent"}));
    ASSERT_TRUE(journal.remove_many({}));
  }
  auto store = NodeStore::open(temp.path());
  ASSERT_TRUE(store);
  auto listed = Journal(*store).list();
  ASSERT_TRUE(listed) << listed.error().message;
  std::vector<std::string> left;
  for (const auto& r : *listed) left.push_back(r.staging_name);
  EXPECT_EQ(left, (std::vector<std::string>{"f0", "f3", "f5"}));
}

// A clock that steps back (NTP, a VM restored from a snapshot) must not make a newer version of a
// file sort below an older one: recovery keeps the highest sequence of a path.
TEST(JournalTest, SequencesIncreaseWhenTheClockStepsBack) {
  bucketfs::testing::TempDir temp("bucketfs-journal-test");
  constexpr std::uint64_t kStampedFarAhead =
      std::uint64_t{1} << 62;  // far beyond any real clock reading in nanoseconds (year 2116)
  {
    auto store = NodeStore::open(temp.path());
    ASSERT_TRUE(store) << store.error().message;
    Journal journal(*store);
    ASSERT_TRUE(journal.put(record("older", "run/model.bin")));
    // What a put made while the clock was far ahead leaves behind.
    auto txn = (*store)->environment().begin_write();
    ASSERT_TRUE(txn);
    ASSERT_TRUE(format::set_counter(*txn, (*store)->databases().meta, format::kMetaJournalSequence,
                                    kStampedFarAhead));
    ASSERT_TRUE(txn->commit());
  }
  auto store = NodeStore::open(temp.path());  // the counter survives a reopen
  ASSERT_TRUE(store);
  Journal journal(*store);
  ASSERT_TRUE(journal.put(record("newer", "run/model.bin")));
  ASSERT_TRUE(journal.put(record("newest", "run/model.bin")));
  auto listed = journal.list();
  ASSERT_TRUE(listed) << listed.error().message;
  std::map<std::string, std::uint64_t> sequence;
  for (const auto& r : *listed) sequence[r.staging_name] = r.sequence;
  EXPECT_GT(sequence["older"], 0u);
  EXPECT_EQ(sequence["newer"], kStampedFarAhead + 1);
  EXPECT_EQ(sequence["newest"], kStampedFarAhead + 2);
}

TEST(JournalTest, OwnerAliveOnlyWhileItsProcessRuns) {
  EXPECT_TRUE(Owner::self().alive());
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  ASSERT_GT(child, 0);
  Owner owner = Owner::self();
  owner.pid = child;
  int status = 0;
  ::waitpid(child, &status, 0);
  EXPECT_FALSE(owner.alive());  // gone (its pid may be reused later, but not its start time)
  Owner other_boot = Owner::self();
  other_boot.boot_id = "not-this-boot";
  EXPECT_FALSE(other_boot.alive());
}

TEST(JournalTest, UnfetchedBaseRoundTripsAndIsChecked) {
  auto with = record("f1", "big.bin");
  with.size = 1000;
  UnfetchedBase unfetched;
  unfetched.hash = xet::chunk_hash(xet::as_byte_span(std::string("v1")));
  unfetched.size = 1200;
  unfetched.limit = 900;
  unfetched.written = {{10, 20}, {500, 1000}};
  with.unfetched = unfetched;
  auto decoded = decode_journal_record("f1", encode_journal_record(with));
  ASSERT_TRUE(decoded) << decoded.error().message;
  ASSERT_TRUE(decoded->unfetched);
  EXPECT_EQ(*decoded->unfetched, unfetched);
  EXPECT_EQ(encode_journal_record(record("f2", "x")).find("unfetched"), std::string::npos);
  // Ranges out of order, overlapping or empty, and a limit past the version, are refused:
  // recovery must not fill bytes a record does not describe. Past the file's size, they are cut.
  const std::string head = R"({"bucket":"a/b","path":"p","mtime_ms":1,"size":100,"owner":{"pid":1,"start":1,"boot":"x"},)"
                           R"("unfetched":{"hash":")" + unfetched.hash.to_string() + R"(","size":100,)";
  EXPECT_TRUE(decode_journal_record("ok", head + R"("limit":100,"written":[[0,5],[6,100]]}})"));
  auto cut = decode_journal_record("cut", R"({"bucket":"a/b","path":"p","mtime_ms":1,"size":50,)"
                                          R"("owner":{"pid":1,"start":1,"boot":"x"},"unfetched":{"hash":")" +
                                              unfetched.hash.to_string() +
                                              R"(","size":100,"limit":80,"written":[[0,5],[40,60],[70,90]]}})");
  ASSERT_TRUE(cut) << cut.error().message;
  EXPECT_EQ(cut->unfetched->limit, 50u);
  EXPECT_EQ(cut->unfetched->written, (std::vector<xet::FileByteRange>{{0, 5}, {40, 50}}));
  for (const std::string tail : {R"("limit":100,"written":[[6,9],[0,5]]}})", R"("limit":100,"written":[[0,5],[5,9]]}})",
                                 R"("limit":100,"written":[[5,5]]}})", R"("limit":101,"written":[]}})",
                                 R"("written":[]}})"}) {
    auto bad = decode_journal_record("f4", head + tail);
    EXPECT_FALSE(bad) << tail;
    if (!bad) continue;
    EXPECT_NE(bad.error().message.find("f4"), std::string::npos);
  }
}

TEST(UnfetchedBaseTest, WrittenRangesMergeAndMissingIsTheRest) {
  UnfetchedBase base;
  base.size = 100;
  base.limit = 100;
  EXPECT_EQ(base.missing(), (std::vector<xet::FileByteRange>{{0, 100}}));
  base.add_written(10, 20);
  base.add_written(30, 40);
  base.add_written(20, 25);  // touches [10, 20): merges
  EXPECT_EQ(base.written, (std::vector<xet::FileByteRange>{{10, 25}, {30, 40}}));
  EXPECT_EQ(base.missing(), (std::vector<xet::FileByteRange>{{0, 10}, {25, 30}, {40, 100}}));
  EXPECT_EQ(base.missing(12, 35), (std::vector<xet::FileByteRange>{{25, 30}}));
  EXPECT_EQ(base.missing(12, 22), (std::vector<xet::FileByteRange>{}));
  base.add_written(5, 50);  // covers both
  EXPECT_EQ(base.written, (std::vector<xet::FileByteRange>{{5, 50}}));
  base.add_written(7, 7);  // empty: nothing
  base.add_written(60, 70);
  base.add_written(90, 100);
  // Cut at 65: the version ends there, and so does the second range; the third goes.
  base.truncate(65);
  EXPECT_EQ(base.limit, 65u);
  EXPECT_EQ(base.written, (std::vector<xet::FileByteRange>{{5, 50}, {60, 65}}));
  EXPECT_EQ(base.missing(), (std::vector<xet::FileByteRange>{{0, 5}, {50, 60}}));
  // Extended again: the new bytes are zeros, not the version's.
  base.truncate(200);
  EXPECT_EQ(base.limit, 65u);
  EXPECT_EQ(base.missing(0, 200), (std::vector<xet::FileByteRange>{{0, 5}, {50, 60}}));
  // Fetched bytes count as present too, and are cut the same way.
  base.add_fetched(0, 3);
  base.add_fetched(52, 200);
  EXPECT_EQ(base.missing(), (std::vector<xet::FileByteRange>{{3, 5}, {50, 52}}));
  base.truncate(51);
  EXPECT_EQ(base.fetched, (std::vector<xet::FileByteRange>{{0, 3}}));
  EXPECT_EQ(base.missing(), (std::vector<xet::FileByteRange>{{3, 5}, {50, 51}}));
  // Never recorded: a recovery fetches them again.
  JournalRecord with = record("f1", "x");
  with.size = 51;
  with.unfetched = base;
  auto decoded = decode_journal_record("f1", encode_journal_record(with));
  ASSERT_TRUE(decoded) << decoded.error().message;
  EXPECT_TRUE(decoded->unfetched->fetched.empty());
  EXPECT_EQ(decoded->unfetched->written, base.written);
  base.truncate(0);
  EXPECT_TRUE(base.written.empty());
  EXPECT_TRUE(base.missing().empty());
}

TEST(UnfetchedBaseTest, MissingMatchesAByteMapUnderRandomWritesAndCuts) {
  std::uint64_t state = 42;
  auto next = [&](std::uint64_t bound) {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (state >> 33) % bound;
  };
  for (int round = 0; round < 200; ++round) {
    UnfetchedBase base;
    base.size = base.limit = 1 + next(300);
    std::vector<char> is_base(base.size, 1);  // 1: still the version's byte
    std::uint64_t size = base.size;
    for (int step = 0; step < 12; ++step) {
      if (next(5) == 0) {
        size = next(350);
        base.truncate(size);
        for (std::uint64_t at = std::min<std::uint64_t>(size, is_base.size()); at < is_base.size(); ++at) is_base[at] = 0;
        is_base.resize(std::max<std::uint64_t>(size, is_base.size()), 0);
      } else {
        const std::uint64_t start = next(size + 1);
        const std::uint64_t end = std::min<std::uint64_t>(size, start + next(40));
        base.add_written(start, end);
        for (std::uint64_t at = start; at < end; ++at) is_base[at] = 0;
      }
      std::vector<xet::FileByteRange> expected;
      for (std::uint64_t at = 0; at < is_base.size(); ++at) {
        if (!is_base[at]) continue;
        if (!expected.empty() && expected.back().end == at) {
          ++expected.back().end;
        } else {
          expected.push_back({at, at + 1});
        }
      }
      ASSERT_EQ(base.missing(0, 400), expected) << "round " << round << " step " << step;
      for (std::size_t i = 1; i < base.written.size(); ++i) ASSERT_LT(base.written[i - 1].end, base.written[i].start);
    }
  }
}

TEST(JournalTest, MalformedRecordIsAnErrorNamingIt) {
  auto decoded = decode_journal_record("f9", "{not json");
  ASSERT_FALSE(decoded);
  EXPECT_EQ(decoded.error().code, ErrorCode::kFormat);
  EXPECT_NE(decoded.error().message.find("f9"), std::string::npos);
  auto round = decode_journal_record("f1", encode_journal_record(record("f1", "a/b")));
  ASSERT_TRUE(round);
  EXPECT_EQ(round->path, "a/b");
}

}  // namespace
}  // namespace bucketfs::cache
