// apiguard-echo, the test workload of the cluster tests (standard library only, no go.sum).
// Built static: CGO_ENABLED=0 go build -buildvcs=false -trimpath -ldflags "-s -w" -o apiguard-echo .
module apiguard.dev/tests/go/echo

go 1.26.0
