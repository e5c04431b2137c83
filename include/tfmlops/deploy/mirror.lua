-- The router's request mirror (tfmlops.deploy.mirror_sink explains the design; router.py renders
-- the haproxy.cfg lines that call it). HAProxy 2.6, Lua 5.3, one shared Lua state (lua-load).
--
-- tfmlops_mirror_req  (http-request, sampled requests only): keeps the request body (already
--                     buffered by option http-buffer-request / http-request wait-for-body) and the time.
-- tfmlops_mirror_res  (http-response, sampled only, after http-response wait-for-body): frames
--                     (meta JSON, request body, response body) and appends it to a bounded queue.
--                     Nothing here waits on the network: the client's answer leaves at once.
-- a task              drains the queue in batches of up to TFMLOPS_MIRROR_BATCH_BYTES and POSTs them to
--                     TFMLOPS_MIRROR_SINK with core.httpclient(); a batch the sink does not take is dropped
--                     (counted), never retried: the mirror must not grow without bound when the sink is down.
-- tfmlops_mirror_stats (service): the counters as JSON, on the router's metrics frontend.
--
-- Frame of one record: string.pack(">s4s4s4", meta, request body, response body).

local SINK = os.getenv("TFMLOPS_MIRROR_SINK") or ""
local RATE = os.getenv("TFMLOPS_MIRROR_RATE") or "0"
local MAX_RECORDS = tonumber(os.getenv("TFMLOPS_MIRROR_MAX_QUEUE") or "") or 1000
local MAX_BYTES = tonumber(os.getenv("TFMLOPS_MIRROR_MAX_QUEUE_BYTES") or "") or 33554432
local BATCH_BYTES = tonumber(os.getenv("TFMLOPS_MIRROR_BATCH_BYTES") or "") or 1048576
local TIMEOUT_MS = tonumber(os.getenv("TFMLOPS_MIRROR_TIMEOUT_MS") or "") or 10000
-- "task" (default): the answer leaves at once, a task delivers; "inline": the response action posts
-- each record itself and the client's answer waits for the sink (kept to measure the difference)
local INLINE = os.getenv("TFMLOPS_MIRROR_DELIVERY") == "inline"

local queue, head, tail, queued_bytes = {}, 1, 0, 0
-- each batch carries an id: HAProxy's httpclient may send a request again after a failure it
-- retries by itself (its proxy's retries); the sink takes a batch id once
local RUN_ID = string.format("%d.%06d-%d", core.now().sec, core.now().usec, math.random(1, 1000000000))
local batch_seq = 0
local stats = {sampled = 0, queued = 0, dropped_queue_full = 0, sent = 0, failed = 0, batches = 0,
               incomplete = 0}

local function esc(s)
  s = tostring(s or "")
  return (s:gsub('[%c"\\\128-\255]', function(c) return string.format("\\u%04x", c:byte()) end))
end

local function now_ms()
  local t = core.now()
  return t.sec * 1000.0 + t.usec / 1000.0
end

core.register_action("tfmlops_mirror_req", {"http-req"}, function(txn)
  local ok, len = pcall(function() return txn.f:req_body_size() end)
  txn:set_priv({body = txn.f:req_body() or "", declared = ok and len or -1, t0 = now_ms(),
                path = txn.f:path() or "", id = txn.f:req_hdr("x-request-id") or ""})
end, 0)

local function post(batch, n)
  batch_seq = batch_seq + 1
  local batch_id = RUN_ID .. "-" .. batch_seq
  local ok, res = pcall(function()
    local hc = core.httpclient()
    return hc:post{url = SINK, body = batch, timeout = TIMEOUT_MS,
                   headers = {["content-type"] = {"application/x-tfmlops-mirror"},
                              ["x-mirror-batch"] = {batch_id},
                              ["content-length"] = {tostring(#batch)}}}
  end)
  stats.batches = stats.batches + 1
  if ok and res and res.status and res.status >= 200 and res.status < 300 then
    stats.sent = stats.sent + n
  else
    stats.failed = stats.failed + n
    core.Warning("tfmlops mirror: " .. n .. " record(s) not taken by " .. SINK .. ": " ..
                 tostring(ok and res and res.status or res))
  end
end

core.register_action("tfmlops_mirror_res", {"http-res"}, function(txn, protocol)
  local p = txn:get_priv()
  if type(p) ~= "table" then return end
  stats.sampled = stats.sampled + 1
  local body = txn.f:res_body() or ""
  local ok, declared = pcall(function() return txn.f:res_body_size() end)
  declared = ok and declared or -1
  -- a body larger than the buffer (tune.bufsize) was not entirely seen: not a record
  if (p.declared and p.declared > #p.body) or (declared and declared > #body) then
    stats.incomplete = stats.incomplete + 1
    return
  end
  local hdrs = txn.http:res_get_headers()
  local grpc_status = hdrs["grpc-status"] and hdrs["grpc-status"][0] or ""
  local meta = string.format(
    '{"protocol":"%s","path":"%s","request_id":"%s","server":"%s","group":"%s","status":%d,' ..
    '"grpc_status":"%s","latency_ms":%.3f,"time_ms":%.0f,"server_addr":"%s","server_port":%d,"rate":%s}',
    esc(protocol), esc(p.path), esc(p.id), esc(txn.f:srv_name()), esc(txn:get_var("txn.mirror_group") or "stable"),
    txn.f:status() or 0, esc(grpc_status), now_ms() - p.t0, p.t0, esc(txn.f:bc_dst()),
    txn.f:bc_dst_port() or 0, tonumber(RATE) or 0)
  local rec = string.pack(">s4s4s4", meta, p.body, body)
  if INLINE then
    stats.queued = stats.queued + 1
    post(rec, 1)
    return
  end
  if tail - head + 1 >= MAX_RECORDS or queued_bytes + #rec > MAX_BYTES then
    stats.dropped_queue_full = stats.dropped_queue_full + 1
    return
  end
  tail = tail + 1
  queue[tail] = rec
  queued_bytes = queued_bytes + #rec
  stats.queued = stats.queued + 1
end, 1)

core.register_task(function()
  while true do
    if tail < head or SINK == "" then
      core.msleep(5)
    else
      local parts, size = {}, 0
      while head <= tail and (size == 0 or size + #queue[head] <= BATCH_BYTES) do
        local rec = queue[head]
        queue[head] = nil
        head = head + 1
        size = size + #rec
        parts[#parts + 1] = rec
      end
      queued_bytes = queued_bytes - size
      post(table.concat(parts), #parts)
    end
  end
end)

core.register_service("tfmlops_mirror_stats", "http", function(applet)
  local out = {}
  for k, v in pairs(stats) do out[#out + 1] = string.format('"%s":%d', k, v) end
  out[#out + 1] = string.format('"queue_records":%d,"queue_bytes":%d', tail - head + 1, queued_bytes)
  local body = "{" .. table.concat(out, ",") .. "}"
  applet:set_status(200)
  applet:add_header("content-type", "application/json")
  applet:add_header("content-length", tostring(#body))
  applet:start_response()
  applet:send(body)
end)
