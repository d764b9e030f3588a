//go:build tools

// The binaries of the test control plane, pinned by this module's go.mod: kube-apiserver,
// kube-controller-manager and kube-scheduler from k8s.io/kubernetes (its staging modules pinned to
// their matching releases by the replace block), and etcd at the version Kubernetes requires.
package tools

import (
	_ "go.etcd.io/etcd/server/v3/etcdmain"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
