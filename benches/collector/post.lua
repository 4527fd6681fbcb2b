-- wrk script: POST events from $EVENTS_FILE (NDJSON), $PER_REQUEST per
-- request, rotating through the file so requests carry different events
-- and partition keys, as real traffic does. Reports latency percentiles
-- and the count of answers other than 202.
local per_request = tonumber(os.getenv("PER_REQUEST") or "100")
local lines = {}
for line in io.lines(os.getenv("EVENTS_FILE")) do
  lines[#lines + 1] = line
end

local bodies = {}
local content_type = per_request == 1 and "application/json" or "application/x-ndjson"
for start = 1, #lines - per_request + 1, per_request do
  bodies[#bodies + 1] = table.concat(lines, "\n", start, start + per_request - 1)
end

local counter = 0
function setup(thread)
  thread:set("offset", counter * 9973)
  counter = counter + 1
end

local next_body = 0
function request()
  next_body = next_body + 1
  local body = bodies[((next_body + (offset or 0)) % #bodies) + 1]
  return wrk.format("POST", "/v1/events", { ["Content-Type"] = content_type }, body)
end

function done(summary, latency, requests)
  io.write(string.format("requests %d, socket errors %d, non-202 %d, p50 %.2f ms, p99 %.2f ms, max %.2f ms\n",
    summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
