-- wrk script shared by bench/bench_proxy.sh and tests/soak/soak_proxy.sh.
-- POST with an Idempotency-Key. BENCH_KEYS=unique: a new key per request
-- (unique across threads and runs, by BENCH_NONCE); BENCH_KEYS=N: N keys
-- in turn, so after the first round every answer is a replay.
-- The requests are formatted once per thread (init): a unique key is
-- spliced between a fixed head and tail, and the N keyed requests are
-- kept whole, so the client spends its CPU on the network rather than on
-- wrk.format() per request (on a shared machine the client's CPU is
-- taken from the servers measured).
local threads = 0
function setup(thread)
    threads = threads + 1
    thread:set("tid", threads)
end
local keys = tonumber(os.getenv("BENCH_KEYS") or "")
local nonce = os.getenv("BENCH_NONCE") or "k"
local n = 0
local head, tail, fixed
wrk.method = "POST"
wrk.body = '{"amount":100,"currency":"EUR"}'
wrk.headers["Content-Type"] = "application/json"
function init(args)
    if keys then
        fixed = {}
        for i = 0, keys - 1 do
            wrk.headers["Idempotency-Key"] = "replay-" .. i
            fixed[i] = wrk.format()
        end
        return
    end
    wrk.headers["Idempotency-Key"] = "\0"
    local r = wrk.format()
    local at = string.find(r, "\0", 1, true)
    head = string.sub(r, 1, at - 1) .. nonce .. "-" .. (tid or 0) .. "-"
    tail = string.sub(r, at + 1)
end
function request()
    n = n + 1
    if fixed then
        return fixed[n % keys]
    end
    return head .. n .. tail
end
