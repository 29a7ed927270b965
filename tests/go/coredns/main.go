// A minimal CoreDNS for the test node's cluster DNS: only the plugins a kube-dns style Corefile
// uses, plus bind (to listen on one address, e.g. 127.0.0.1, when it runs on the host). Built by
// tests/tools.sh (CGO_ENABLED=0, static). This is CoreDNS's documented way of selecting plugins
// without editing plugin.cfg: import them, set dnsserver.Directives, and call coremain.Run().
// (The kubernetes plugin also registers metadata, prometheus and transfer, which it imports; they
// are not in Directives, so a Corefile cannot use them.)
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

// The plugin chain order: the relative order these plugins have in CoreDNS's plugin.cfg.
var directives = []string{
	"reload",
	"bind",
	"ready",
	"health",
	"errors",
	"log",
	"loadbalance",
	"cache",
	"kubernetes",
}

func init() {
	dnsserver.Directives = directives
}

func main() {
	coremain.Run()
}
