#!/bin/sh
# The laptop's NSQ programs, registered by the local Consul agent itself so
# that svckit services find them like any other service: port = TCP port,
# meta.http_port = HTTP port, health = nsqd/nsqlookupd's own /ping.
#
# Prints that agent configuration (HCL) for the ports the Procfile gives
# nsqd and nsqlookupd; the Procfile's consul line passes it as -hcl, so the
# registrations follow the ports when they are moved:
#
#   sh etc/consul/nsq.sh NSQD_TCP NSQD_HTTP NSQLOOKUPD_TCP NSQLOOKUPD_HTTP
set -eu
[ $# -eq 4 ] || { echo "usage: $0 NSQD_TCP NSQD_HTTP NSQLOOKUPD_TCP NSQLOOKUPD_HTTP" >&2; exit 2; }
for port in "$@"; do
  case $port in
    '' | *[!0-9]*) echo "$0: not a port: '$port'" >&2; exit 2 ;;
  esac
done
cat <<HCL
services = [
  {
    id      = "nsqd-127.0.0.1-$1"
    name    = "nsqd"
    address = "127.0.0.1"
    port    = $1
    meta    = { http_port = "$2" }
    check   = { id = "nsqd-ping", name = "nsqd /ping", http = "http://127.0.0.1:$2/ping", interval = "2s", timeout = "1s" }
  },
  {
    id      = "nsqlookupd-127.0.0.1-$3"
    name    = "nsqlookupd"
    address = "127.0.0.1"
    port    = $3
    meta    = { http_port = "$4" }
    check   = { id = "nsqlookupd-ping", name = "nsqlookupd /ping", http = "http://127.0.0.1:$4/ping", interval = "2s", timeout = "1s" }
  }
]
HCL
