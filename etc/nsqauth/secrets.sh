#!/bin/sh
# The laptop's NSQ secrets: one random secret per identity of the laptop's
# policy (etc/nsqauth/policy.json names them NSQAUTH_SECRET_<IDENTITY>),
# made on first use under var/nsqauth/secrets/ (mode 0600, never in the
# repository) and kept across runs; delete the directory to get new ones.
#
#   sh etc/nsqauth/secrets.sh            export lines for every NSQAUTH_SECRET_*
#                                        (the environment of svckit nsqauth serve)
#   sh etc/nsqauth/secrets.sh IDENTITY   export SVCKIT_NSQ_AUTH_SECRET=… (a service's,
#                                        or the operator CLI's, identity)
#
# The Procfile evaluates the output: s=$(sh etc/nsqauth/secrets.sh worker) && eval "$s".
# Every process of the Procfile runs this at once: a secret is written to a
# temporary file and linked into place (ln fails if another got there
# first), so all of them read the same one.
set -eu
dir=${NSQAUTH_SECRETS_DIR:-var/nsqauth/secrets}
policy=${NSQAUTH_POLICY:-etc/nsqauth/policy.json}
[ $# -le 1 ] || { echo "usage: $0 [IDENTITY]" >&2; exit 2; }
umask 077
mkdir -p "$dir"

secret() { # NAME: print the secret in $dir/NAME, making it first
  f=$dir/$1
  if [ ! -s "$f" ]; then
    tmp=$(mktemp "$dir/.new.XXXXXX")
    # 128 random bits, hex
    od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$tmp"
    ln "$tmp" "$f" 2>/dev/null || :
    rm -f "$tmp"
  fi
  cat "$f"
}

vars=$(grep -o 'NSQAUTH_SECRET_[A-Z0-9_]*' "$policy" | sort -u)
[ -n "$vars" ] || { echo "$0: $policy names no NSQAUTH_SECRET_* variable" >&2; exit 1; }
if [ $# -eq 0 ]; then
  for v in $vars; do
    echo "export $v=$(secret "$v")"
  done
  exit 0
fi
v=NSQAUTH_SECRET_$(printf '%s' "$1" | tr 'a-z.-' 'A-Z__')
case " $(echo $vars) " in
  *" $v "*) ;;
  *) echo "$0: identity '$1': $policy has no $v" >&2; exit 2 ;;
esac
echo "export SVCKIT_NSQ_AUTH_SECRET=$(secret "$v")"
