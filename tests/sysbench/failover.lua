#!/usr/bin/sysbench
-- sysbench's own OLTP test named by LBADM_SB_TEST (oltp_read_only, oltp_point_select, ...),
-- with one change: a transaction whose connection is lost is counted, and the thread opens a
-- *new* connection (retrying until one succeeds) and goes on.
--
-- Why not --mysql-ignore-errors: Debian's sysbench 1.0.20 is linked against libmariadb and
-- crashes (SIGSEGV) or fails when it reconnects by itself, because it reuses the MYSQL handle
-- it closed (akopytov/sysbench#527, #461). A fresh drv:connect() gets a fresh handle.
--
-- Each lost transaction prints "lbadm: lost <thread> <sql_errno>", each new connection
-- "lbadm: reconnected <thread> <attempts>", so the caller can count them as they happen.

local ffi = require("ffi")
pcall(ffi.cdef, "int usleep(unsigned int usec);")

package.path = "/usr/share/sysbench/?.lua;" .. package.path
local test = os.getenv("LBADM_SB_TEST") or "oltp_read_only"
dofile("/usr/share/sysbench/" .. test .. ".lua")

local transaction = event

local function reconnect()
   pcall(function() con:disconnect() end)
   local attempts = 0
   while true do
      attempts = attempts + 1
      local ok, c = pcall(function() return drv:connect() end)
      if ok and c ~= nil then
         con = c
         break
      end
      ffi.C.usleep(10000)
   end
   for t = 1, sysbench.opt.tables do
      stmt[t] = {}
      param[t] = {}
   end
   stmt.begin = nil
   stmt.commit = nil
   prepare_statements()
   print(string.format("lbadm: reconnected %d %d", sysbench.tid, attempts))
end

function event()
   local ok, err = pcall(transaction)
   if ok then
      return
   end
   local errno = type(err) == "table" and err.sql_errno or -1
   print(string.format("lbadm: lost %d %s", sysbench.tid, tostring(errno)))
   reconnect()
end

function thread_done()
   pcall(close_statements)
   pcall(function() con:disconnect() end)
end
