// CoreDNS for the local cluster's real node, built from its own module with only the plugins the node needs:
// the kubernetes plugin answers cluster.local from the API server; nothing forwards a query off the machine
// (there is no forward plugin in this binary at all).
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

// The order in which the server runs the plugins of a server block (CoreDNS' plugin.cfg order, reduced).
var directives = []string{"bind", "ready", "health", "errors", "log", "kubernetes"}

func main() {
	dnsserver.Directives = directives
	coremain.Run()
}
