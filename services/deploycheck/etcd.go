package deploycheck

import (
	"fmt"
	"path"
	"slices"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/backlog/controlplane/services/backlogd/app"
)

// The checks of etcd mode (-store=etcd): a store-owning service keeps its
// store in etcd and runs as several replicas, which must share its keys,
// spread over nodes, survive drains one at a time, and all talk to one
// etcd prefix over TLS.

// MinHAReplicas is the fewest replicas of a store-owning service on etcd:
// one drained and one failed still leave one serving.
const MinHAReplicas = 3

// HostnameKey is the topology key that puts replicas on different nodes.
const HostnameKey = "kubernetes.io/hostname"

// etcdMode reports whether w runs a store-owning target on etcd.
func (k *kcheck) etcdMode(w *Workload) bool {
	for _, cmd := range w.Cmds {
		if cmd.Stores() && cmd.Etcd() {
			return true
		}
	}
	return false
}

func (k *kcheck) etcdReplicas(w *Workload) {
	if w.Replicas == nil || *w.Replicas < MinHAReplicas {
		n := int32(1)
		if w.Replicas != nil {
			n = *w.Replicas
		}
		k.r.errorf(w.Obj.String(), "replicas %d: run at least %d replicas of a store-owning service on etcd (one drained and one failed still leave one serving)", n, MinHAReplicas)
	}
}

// etcdWorkload: replicas spread over nodes and, in a whole deployment,
// covered by a disruption budget.
func (k *kcheck) etcdWorkload(w *Workload) {
	if !antiAffine(w) {
		k.r.errorf(w.Obj.String(), "no podAntiAffinity term on %s selecting its own pods: its replicas could land on one node and fail together", HostnameKey)
	}
	if k.s.Complete && !k.budgeted(w) {
		k.r.errorf(w.Obj.String(), "no PodDisruptionBudget selects its pods: a node drain may evict every replica at once")
	}
}

// antiAffine: a required or preferred pod anti-affinity term on the node's
// hostname whose selector matches w's own pods.
func antiAffine(w *Workload) bool {
	a := w.pod().Affinity
	if a == nil || a.PodAntiAffinity == nil {
		return false
	}
	terms := slices.Clone(a.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution)
	for _, p := range a.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution {
		terms = append(terms, p.PodAffinityTerm)
	}
	for _, t := range terms {
		if t.TopologyKey != HostnameKey || t.LabelSelector == nil {
			continue
		}
		sel, err := metav1.LabelSelectorAsSelector(t.LabelSelector)
		if err == nil && !sel.Empty() && sel.Matches(labels.Set(w.Template.Labels)) {
			return true
		}
	}
	return false
}

func (k *kcheck) budgeted(w *Workload) bool {
	for _, o := range k.s.Objects {
		if pdb, ok := o.Value.(*policyv1.PodDisruptionBudget); ok && pdb.Spec.Selector != nil && slices.Contains(k.selectedBy(pdb.Spec.Selector), w) {
			return true
		}
	}
	return false
}

// etcdFiles: the data dir is writable (it keeps the markers of the stores
// this pod opened, and a first start's operator token), TLS to etcd comes
// from a Secret, and what every replica must share does too.
func (k *kcheck) etcdFiles(w *Workload, c *corev1.Container, cmd *Command, where string) {
	dir := path.Clean(cmd.Cfg.DataDir)
	if m := mountOf(c, dir); m == nil || m.ReadOnly || path.Clean(m.MountPath) != dir {
		k.r.errorf(where, "-data-dir=%s is not the mountPath of a writable volume (etcd mode keeps its store markers there)", cmd.Cfg.DataDir)
	}
	if _, ok := cmd.Given["etcd-endpoints"]; !ok {
		k.r.errorf(where, "-store=etcd without -etcd-endpoints")
	}
	for _, f := range []string{"etcd-ca-file", "etcd-cert-file", "etcd-key-file"} {
		file, ok := cmd.Given[f]
		if !ok {
			k.r.errorf(where, "-store=etcd without -%s: etcd holds every credential hash and secret ciphertext; reach it over TLS with a client certificate", f)
			continue
		}
		k.secretFile(w, c, file, where)
	}
	if w.Replicas != nil && *w.Replicas <= 1 {
		return
	}
	// Every replica signs audit digests and hashes credentials: with a
	// key of its own (the default, a file in its data dir) they would
	// disagree.
	if file, ok := cmd.Given["audit-signing-key-file"]; !ok {
		k.r.errorf(where, "replicas would each sign audit digests with a key of their own (<data-dir>/%s): give every replica -audit-signing-key-file from a Secret", "audit-signing.key")
	} else {
		k.secretFile(w, c, file, where)
	}
	if cmd.Serves(app.TargetCredential) {
		keyPath := path.Join(dir, "credential.key")
		m := mountOf(c, keyPath)
		secret := false
		for _, v := range w.pod().Volumes {
			if m != nil && v.Name == m.Name && v.Secret != nil {
				secret = true
			}
		}
		if m == nil || path.Clean(m.MountPath) != keyPath || !secret {
			k.r.errorf(where, "replicas of the credential service need one credential.key: mount it from a Secret at %s (each would otherwise make its own, and refuse the others' credentials)", keyPath)
		}
	}
}

// etcdComplete: every etcd-mode process of a deployment uses one prefix on
// one cluster; otherwise its services would not see each other's data.
func (k *kcheck) etcdComplete() {
	type use struct{ where, prefix, endpoints string }
	var uses []use
	for _, w := range k.wls {
		for _, name := range sortedKeys(w.Cmds) {
			if cmd := w.Cmds[name]; cmd.Stores() && cmd.Etcd() {
				uses = append(uses, use{fmt.Sprintf("%s container %s", w.Obj, name), cmd.EtcdPrefix(), cmd.Given["etcd-endpoints"]})
			}
		}
	}
	slices.SortFunc(uses, func(a, b use) int {
		switch {
		case a.where < b.where:
			return -1
		case a.where > b.where:
			return 1
		}
		return 0
	})
	for _, u := range uses[min(1, len(uses)):] {
		if u.prefix != uses[0].prefix {
			k.r.errorf(u.where, "-etcd-prefix=%s, but %s uses %s: one deployment keeps every store under one prefix", u.prefix, uses[0].where, uses[0].prefix)
		}
		if u.endpoints != uses[0].endpoints {
			k.r.errorf(u.where, "-etcd-endpoints=%s, but %s uses %s: one deployment uses one etcd cluster", u.endpoints, uses[0].where, uses[0].endpoints)
		}
	}
}
