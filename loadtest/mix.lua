-- The realistic Braze mix, deterministic (the wrk twin of loadtest/locustfile.py):
--   * a send is a stream of mostly distinct recipients; each recipient is asked for 2-3 times (email parts,
--     retries), the repeats landing 1..REPEAT_SPREAD requests later on any connection, so some of them
--     arrive while the first request is still in flight;
--   * UNKNOWN_SHARE of the recipients are ids Personalize has never seen (new.*+braze@example.com);
--   * every QA_EVERY-th request is QA's repeated curl of one fixed user (QA_USER).
-- Settings (environment): BENCH_RUN (number, keeps runs apart), UNKNOWN_SHARE (0.1), REPEATS_MIN (2),
-- REPEATS_MAX (3), REPEAT_SPREAD (200), QA_EVERY (500), QA_USER (user123), NUM_RESULTS (3).
-- Distinct users are counted by construction (one per new recipient, plus the QA user once asked) and
-- printed by done() as one line: MIX_STATS users=N unknown=N qa=N repeats=N planned=N; the answers are
-- counted by X-Recommendations-Source (sources.lua).
package.path = debug.getinfo(1, "S").source:match("^@(.*/)") .. "?.lua;" .. package.path
local sources = require("sources")
local threads = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
  table.insert(threads, thread)
end

local function env_number(name, default)
  return tonumber(os.getenv(name) or "") or default
end

function init(args)
  local run = env_number("BENCH_RUN", 0)
  unknown_share = env_number("UNKNOWN_SHARE", 0.1)
  repeats_min = env_number("REPEATS_MIN", 2)
  repeats_max = env_number("REPEATS_MAX", 3)
  spread = env_number("REPEAT_SPREAD", 200)
  qa_every = env_number("QA_EVERY", 500)
  local num_results = os.getenv("NUM_RESULTS") or "3"
  suffix = "&num_results=" .. num_results
  qa_path = "/recommendations?user_id=" .. (os.getenv("QA_USER") or "user123") .. suffix
  prefix = run .. "-" .. tid .. "-"
  seed = 1 + (tid * 7919 + run * 104729) % 2147483646
  step, users, unknown, qa, repeats = 0, 0, 0, 0, 0
  due = {}      -- step -> paths whose repeat falls due then
  backlog = {}  -- due repeats not sent yet, oldest first
  head, tail = 1, 0
  sources.init()
end

local function rand()  -- Park-Miller: exact in doubles, the same sequence on every run
  seed = (seed * 16807) % 2147483647
  return seed / 2147483647
end

function request()
  step = step + 1
  local bucket = due[step]
  if bucket then
    for i = 1, #bucket do
      tail = tail + 1
      backlog[tail] = bucket[i]
    end
    due[step] = nil
  end
  local path
  if qa_every > 0 and step % qa_every == 0 then
    qa = qa + 1
    path = qa_path
  elseif head <= tail then
    path = backlog[head]
    backlog[head] = nil
    head = head + 1
    repeats = repeats + 1
  else
    users = users + 1
    local id
    if rand() < unknown_share then
      unknown = unknown + 1
      id = "new." .. prefix .. users .. "%2Bbraze%40example.com"
    else
      id = "u" .. prefix .. users
    end
    path = "/recommendations?user_id=" .. id .. suffix
    local extra = repeats_min - 1 + math.floor(rand() * (repeats_max - repeats_min + 1))
    for _ = 1, extra do
      local at = step + 1 + math.floor(rand() * spread)
      local b = due[at]
      if not b then
        b = {}
        due[at] = b
      end
      b[#b + 1] = path
    end
  end
  return wrk.format("GET", path)
end

response = sources.response

function done(summary, latency, requests)
  sources.done(threads)
  local total_users, total_unknown, total_qa, total_repeats, planned = 0, 0, 0, 0, 0
  for _, thread in ipairs(threads) do
    total_users = total_users + thread:get("users")
    total_unknown = total_unknown + thread:get("unknown")
    total_qa = total_qa + thread:get("qa")
    total_repeats = total_repeats + thread:get("repeats")
    planned = planned + thread:get("step")
  end
  if total_qa > 0 then
    total_users = total_users + 1  -- the QA user
  end
  io.write(string.format("MIX_STATS users=%d unknown=%d qa=%d repeats=%d planned=%d\n",
    total_users, total_unknown, total_qa, total_repeats, planned))
end
