-- wrk script shared by bench/bench_proxy.sh and tests/soak/soak_proxy.sh.
-- POST with an Idempotency-Key. BENCH_KEYS=unique: a new key per request
-- (unique across threads and runs, by BENCH_NONCE); BENCH_KEYS=N: N keys
-- in turn, so after the first round every answer is a replay.
local threads = 0
function setup(thread)
    threads = threads + 1
    thread:set("tid", threads)
end
local keys = tonumber(os.getenv("BENCH_KEYS") or "")
local nonce = os.getenv("BENCH_NONCE") or "k"
local n = 0
wrk.method = "POST"
wrk.body = '{"amount":100,"currency":"EUR"}'
wrk.headers["Content-Type"] = "application/json"
function request()
    n = n + 1
    if keys then
        wrk.headers["Idempotency-Key"] = "replay-" .. (n % keys)
    else
        wrk.headers["Idempotency-Key"] =
            string.format("%s-%d-%d", nonce, tid or 0, n)
    end
    return wrk.format()
end
