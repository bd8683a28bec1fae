// etcd built from its server module at the version k8s.io/kubernetes pins; `go install` of etcd's own
// main fails on the replace directives in its go.mod, and Debian's etcd is too old for Kubernetes 1.34.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
