# Shared by demo.sh and test.sh: find Go and install what is missing, idempotently.
set -euo pipefail

cd "$(dirname "$0")/.."

if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH="/usr/local/go/bin:$PATH"
fi
command -v go >/dev/null 2>&1 || { echo "weft needs Go (see go.mod for the version); /usr/local/go/bin/go not found" >&2; exit 1; }
export PATH="$(go env GOPATH)/bin:$PATH"

# apt_need PKG...: install the Debian packages that are not installed yet.
apt_need() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${missing[*]} (run as root to install them)" >&2
    return 1
  fi
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

build() {
  go mod download
  CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o bin/ ./cmd/...
}
