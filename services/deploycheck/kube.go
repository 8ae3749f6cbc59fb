package deploycheck

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/backlog/controlplane/services/backlogd/app"
	"github.com/backlog/controlplane/services/vault"
)

// Labels every backlog object carries.
const (
	LabelName      = "app.kubernetes.io/name"
	LabelPartOf    = "app.kubernetes.io/part-of"
	LabelComponent = "app.kubernetes.io/component"
)

// Components a pod may have besides the targets.
const (
	ComponentAllInOne = "all-in-one"
	ComponentBackup   = "backup"
	ComponentRestore  = "restore"
)

// Set is the resources of one kustomization (or a base with a document's
// extra resources). A complete set is a whole deployment (an overlay): every
// address must lead somewhere, every target must run.
type Set struct {
	Name     string
	Complete bool
	Objects  []*Object
	// RunAsUser is the image's USER; pods must run as it (0: not checked).
	RunAsUser int64
}

// Workload is a pod template and what runs it.
type Workload struct {
	Obj      *Object
	Replicas *int32 // nil for a Job
	Selector *metav1.LabelSelector
	Template *corev1.PodTemplateSpec
	Claims   []corev1.PersistentVolumeClaim
	// Cmds is each backlogd container's parsed command line, by container name.
	Cmds map[string]*Command
}

func (w *Workload) pod() *corev1.PodSpec { return &w.Template.Spec }

func (w *Workload) container(name string) *corev1.Container {
	for i := range w.pod().Containers {
		if w.pod().Containers[i].Name == name {
			return &w.pod().Containers[i]
		}
	}
	return nil
}

// serving returns the container of w that serves target t, and its command.
func (w *Workload) serving(t string) (*corev1.Container, *Command) {
	for _, name := range sortedKeys(w.Cmds) {
		if c := w.Cmds[name]; c.Serves(t) {
			return w.container(name), c
		}
	}
	return nil, nil
}

type kcheck struct {
	r   *Report
	s   *Set
	wls []*Workload
	// tokenRefs maps "secret/key" of the service token to who uses it.
	tokenRefs map[string][]string
}

// CheckSet checks a set of resources against each other and backlogd's
// flags.
func CheckSet(s *Set) Report {
	k := &kcheck{r: &Report{}, s: s, tokenRefs: map[string][]string{}}
	for _, o := range s.Objects {
		if w := k.workload(o); w != nil {
			k.wls = append(k.wls, w)
		}
	}
	for _, o := range s.Objects {
		k.labels(o)
		switch v := o.Value.(type) {
		case *corev1.Service:
			k.service(o, v)
		case *networkingv1.NetworkPolicy:
			k.networkPolicy(o, v)
		case *policyv1.PodDisruptionBudget:
			k.pdb(o, v)
		case *corev1.ConfigMap:
			for _, key := range sortedKeys(v.Data) {
				if name, ok := flagOfEnv(key); ok {
					CheckFlagValue(k.r, o.String()+": "+key, name, v.Data[key])
				} else {
					k.r.errorf(o.String(), "key %s is not a BACKLOG_<FLAG> variable", key)
				}
			}
		case *corev1.Namespace:
			if v.Labels["pod-security.kubernetes.io/enforce"] != "restricted" {
				k.r.errorf(o.String(), "enforce the restricted Pod Security Standard (label pod-security.kubernetes.io/enforce: restricted)")
			}
		}
	}
	for _, w := range k.wls {
		k.checkWorkload(w)
	}
	k.overlaps()
	if s.Complete {
		k.complete()
	}
	return *k.r
}

// workload extracts the pod template of o, or nil if o has none.
func (k *kcheck) workload(o *Object) *Workload {
	w := &Workload{Obj: o, Cmds: map[string]*Command{}}
	switch v := o.Value.(type) {
	case *appsv1.StatefulSet:
		w.Replicas, w.Selector, w.Template, w.Claims = v.Spec.Replicas, v.Spec.Selector, &v.Spec.Template, v.Spec.VolumeClaimTemplates
	case *appsv1.Deployment:
		w.Replicas, w.Selector, w.Template = v.Spec.Replicas, v.Spec.Selector, &v.Spec.Template
	case *batchv1.Job:
		w.Template = &v.Spec.Template
	case *batchv1.CronJob:
		w.Template = &v.Spec.JobTemplate.Spec.Template
	default:
		return nil
	}
	for i := range w.pod().Containers {
		c := &w.pod().Containers[i]
		where := fmt.Sprintf("%s container %s", o, c.Name)
		if !isBacklogdImage(c.Image) {
			k.r.errorf(where, "image %q: every container here runs the backlogd image", c.Image)
			continue
		}
		if len(c.Command) > 0 {
			k.r.errorf(where, "sets command: leave it to the image's ENTRYPOINT (/backlogd) and pass args")
		}
		env := k.env(where, c)
		args := make([]string, 0, len(c.Args))
		for _, a := range c.Args {
			x, missing := expandVars(a, env)
			for _, m := range missing {
				k.r.errorf(where, "argument %q refers to $(%s), which the container does not define", a, m)
			}
			args = append(args, x)
		}
		if cmd, ok := ParseCommand(k.r, where, args, env); ok {
			w.Cmds[c.Name] = cmd
		}
	}
	return w
}

func isBacklogdImage(image string) bool {
	name := image
	if i := strings.IndexByte(name, '@'); i >= 0 {
		name = name[:i]
	}
	if i := strings.LastIndexByte(name, ':'); i > strings.LastIndexByte(name, '/') {
		name = name[:i]
	}
	return path.Base(name) == "backlogd"
}

// env is the container's environment as the kubelet would build it: envFrom
// first, then env; values that come from the pod get stand-ins.
func (k *kcheck) env(where string, c *corev1.Container) map[string]string {
	env := map[string]string{}
	for _, ef := range c.EnvFrom {
		switch {
		case ef.ConfigMapRef != nil:
			cm := k.configMap(ef.ConfigMapRef.Name)
			if cm == nil {
				if ef.ConfigMapRef.Optional == nil || !*ef.ConfigMapRef.Optional {
					k.r.errorf(where, "envFrom ConfigMap %s is not in %s", ef.ConfigMapRef.Name, k.s.Name)
				} else if k.s.Complete {
					k.r.errorf(where, "optional envFrom ConfigMap %s is not in the overlay %s: generate it there", ef.ConfigMapRef.Name, k.s.Name)
				}
				continue
			}
			for key, v := range cm.Data {
				env[ef.Prefix+key] = v
			}
		default:
			k.r.errorf(where, "envFrom: only ConfigMaps (settings are not secrets; secrets are files)")
		}
	}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			v, missing := expandVars(e.Value, env)
			for _, m := range missing {
				k.r.errorf(where, "env %s refers to $(%s), which is not defined before it", e.Name, m)
			}
			env[e.Name] = v
		case strings.HasPrefix(e.Name, "BACKLOG_"):
			k.r.errorf(where, "env %s: give BACKLOG_ settings as values or in the ConfigMap, so that they can be checked", e.Name)
		case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "status.podIP":
			env[e.Name] = "10.0.0.10"
		case e.ValueFrom.ResourceFieldRef != nil:
			env[e.Name] = "1"
		default:
			env[e.Name] = "x"
		}
	}
	return env
}

var varRef = regexp.MustCompile(`\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)`)

// expandVars expands $(VAR) references as the kubelet does for args and env.
func expandVars(s string, env map[string]string) (string, []string) {
	var missing []string
	out := varRef.ReplaceAllStringFunc(s, func(m string) string {
		if m == "$$" {
			return "$"
		}
		name := m[2 : len(m)-1]
		if v, ok := env[name]; ok {
			return v
		}
		missing = append(missing, name)
		return m
	})
	return out, missing
}

func (k *kcheck) configMap(name string) *corev1.ConfigMap {
	for _, o := range k.s.Objects {
		if cm, ok := o.Value.(*corev1.ConfigMap); ok && o.Name == name {
			return cm
		}
	}
	return nil
}

// labels: every object carries the backlog labels.
func (k *kcheck) labels(o *Object) {
	l := o.Value.GetLabels()
	if l[LabelPartOf] != "backlog" {
		k.r.errorf(o.String(), "label %s: backlog is missing", LabelPartOf)
	}
	switch o.Value.(type) {
	case *corev1.Namespace, *corev1.ConfigMap:
		return
	}
	if l[LabelName] != "backlogd" {
		k.r.errorf(o.String(), "label %s: backlogd is missing", LabelName)
	}
	if l[LabelComponent] == "" {
		k.r.errorf(o.String(), "label %s is missing", LabelComponent)
	}
}

func (k *kcheck) checkWorkload(w *Workload) {
	o := w.Obj
	tl := w.Template.Labels
	for _, key := range []string{LabelName, LabelPartOf, LabelComponent} {
		if tl[key] != o.Value.GetLabels()[key] {
			k.r.errorf(o.String(), "pod template label %s=%q differs from the %s's %q", key, tl[key], o.Kind, o.Value.GetLabels()[key])
		}
	}
	if w.Selector != nil {
		sel, err := metav1.LabelSelectorAsSelector(w.Selector)
		switch {
		case err != nil:
			k.r.errorf(o.String(), "selector: %v", err)
		case sel.Empty():
			k.r.errorf(o.String(), "empty selector")
		case !sel.Matches(labels.Set(tl)):
			k.r.errorf(o.String(), "selector %s does not match the pod template's labels", sel)
		}
	} else if o.Kind != "Job" && o.Kind != "CronJob" {
		k.r.errorf(o.String(), "no selector")
	}
	k.podSecurity(w)
	k.volumes(w)
	k.annotations(w)
	if len(w.pod().InitContainers) > 0 {
		k.r.errorf(o.String(), "init containers are not checked here: add them to deploycheck first")
	}
	stores, gateway, etcd := false, false, false
	for _, name := range sortedKeys(w.Cmds) {
		cmd := w.Cmds[name]
		c := w.container(name)
		where := fmt.Sprintf("%s container %s", o, name)
		k.container(w, c, cmd, where)
		stores = stores || cmd.Stores()
		etcd = etcd || (cmd.Stores() && cmd.Etcd())
		gateway = gateway || cmd.Serves(app.TargetGateway)
		k.component(w, cmd, where)
	}
	switch o.Kind {
	case "StatefulSet":
		if !stores {
			k.r.errorf(o.String(), "a StatefulSet that runs no store-owning target: make it a Deployment")
		}
		if etcd {
			k.etcdReplicas(w)
		} else if w.Replicas == nil || *w.Replicas != 1 {
			k.r.errorf(o.String(), "replicas must be exactly 1: each store has one writer")
		}
		sts := o.Value.(*appsv1.StatefulSet)
		if svc := k.serviceNamed(sts.Spec.ServiceName); svc == nil || !k.selects(svc.Spec.Selector, w) {
			k.r.errorf(o.String(), "serviceName %q: no Service of that name selects this StatefulSet", sts.Spec.ServiceName)
		}
		for _, pvc := range w.Claims {
			if !slices.Contains(pvc.Spec.AccessModes, corev1.ReadWriteOnce) && !slices.Contains(pvc.Spec.AccessModes, corev1.ReadWriteOncePod) {
				k.r.errorf(o.String(), "volumeClaimTemplate %s: want ReadWriteOnce (one writer)", pvc.Name)
			}
			if q, ok := pvc.Spec.Resources.Requests[corev1.ResourceStorage]; !ok || q.Sign() <= 0 {
				k.r.errorf(o.String(), "volumeClaimTemplate %s: no storage request", pvc.Name)
			}
		}
		if p := sts.Spec.PersistentVolumeClaimRetentionPolicy; p == nil || p.WhenDeleted != appsv1.RetainPersistentVolumeClaimRetentionPolicyType {
			k.r.errorf(o.String(), "persistentVolumeClaimRetentionPolicy.whenDeleted must be Retain: deleting the StatefulSet must not delete the store")
		}
	case "Deployment":
		if stores && !etcd {
			k.r.errorf(o.String(), "a Deployment runs a store-owning target: stores need a StatefulSet of one replica (or -store=etcd)")
		}
		if etcd {
			k.etcdReplicas(w)
		}
		if gateway && (w.Replicas == nil || *w.Replicas < 2) {
			k.r.errorf(o.String(), "run at least 2 gateway replicas")
		}
	case "Job", "CronJob":
		if stores || gateway {
			k.r.errorf(o.String(), "a Job runs a server target")
		}
	}
	if etcd {
		k.etcdWorkload(w)
	}
}

// component: the component label says what the pod runs.
func (k *kcheck) component(w *Workload, cmd *Command, where string) {
	var want string
	switch {
	case cmd.Sub == "backup":
		want = ComponentBackup
	case cmd.Sub == "restore":
		want = ComponentRestore
	case cmd.Sub != "":
		k.r.errorf(where, "backlogd %s is run by hand (kubectl exec), not as a workload", cmd.Sub)
		return
	case len(cmd.Cfg.Targets) == 1:
		want = cmd.Cfg.Targets[0]
	case len(cmd.Cfg.Targets) == len(app.AllTargets):
		want = ComponentAllInOne
	default:
		k.r.errorf(where, "runs %v: run one target or all of them per pod", cmd.Cfg.Targets)
		return
	}
	if got := w.Template.Labels[LabelComponent]; got != want {
		k.r.errorf(where, "label %s is %q but the container runs %s", LabelComponent, got, want)
	}
}

func (k *kcheck) podSecurity(w *Workload) {
	o, p := w.Obj, w.pod()
	if p.AutomountServiceAccountToken == nil || *p.AutomountServiceAccountToken {
		k.r.errorf(o.String(), "set automountServiceAccountToken: false (backlogd does not call the Kubernetes API)")
	}
	if p.EnableServiceLinks == nil || *p.EnableServiceLinks {
		k.r.errorf(o.String(), "set enableServiceLinks: false (service links put BACKLOG_*_PORT variables where backlogd reads BACKLOG_<FLAG>)")
	}
	if p.HostNetwork || p.HostPID || p.HostIPC {
		k.r.errorf(o.String(), "uses the host's namespaces")
	}
	sc := p.SecurityContext
	if sc == nil {
		k.r.errorf(o.String(), "no pod securityContext")
		return
	}
	if sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
		k.r.errorf(o.String(), "set runAsNonRoot: true")
	}
	switch {
	case sc.RunAsUser == nil || *sc.RunAsUser == 0:
		k.r.errorf(o.String(), "set a non-zero runAsUser")
	case k.s.RunAsUser != 0 && *sc.RunAsUser != k.s.RunAsUser:
		k.r.errorf(o.String(), "runAsUser %d, but the image's USER is %d", *sc.RunAsUser, k.s.RunAsUser)
	}
	if sc.RunAsGroup == nil || *sc.RunAsGroup == 0 {
		k.r.errorf(o.String(), "set a non-zero runAsGroup")
	}
	if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		k.r.errorf(o.String(), "set seccompProfile RuntimeDefault")
	}
	needsGroup := len(w.Claims) > 0
	for _, v := range p.Volumes {
		needsGroup = needsGroup || v.Secret != nil || v.PersistentVolumeClaim != nil
	}
	if needsGroup && (sc.FSGroup == nil || *sc.FSGroup == 0) {
		k.r.errorf(o.String(), "set fsGroup: the non-root user must be able to write its volume and read its secrets")
	}
}

func (k *kcheck) volumes(w *Workload) {
	o, p := w.Obj, w.pod()
	vols := map[string]*corev1.Volume{}
	for i := range p.Volumes {
		v := &p.Volumes[i]
		if vols[v.Name] != nil {
			k.r.errorf(o.String(), "volume %s declared twice", v.Name)
		}
		vols[v.Name] = v
		if v.HostPath != nil {
			k.r.errorf(o.String(), "volume %s is a hostPath", v.Name)
		}
		if s := v.Secret; s != nil {
			if s.DefaultMode == nil || *s.DefaultMode != 0o400 {
				k.r.errorf(o.String(), "secret volume %s: set defaultMode: 0400", v.Name)
			}
			if s.Optional != nil && *s.Optional {
				k.r.errorf(o.String(), "secret volume %s is optional: backlogd would start without its key", v.Name)
			}
			for _, it := range s.Items {
				if it.Mode != nil && *it.Mode != 0o400 {
					k.r.errorf(o.String(), "secret volume %s item %s: mode must be 0400", v.Name, it.Key)
				}
			}
		}
	}
	claims := map[string]bool{}
	for _, c := range w.Claims {
		if vols[c.Name] != nil || claims[c.Name] {
			k.r.errorf(o.String(), "volumeClaimTemplate %s clashes with another volume", c.Name)
		}
		claims[c.Name] = true
	}
	mounted := map[string]bool{}
	for _, c := range p.Containers {
		paths := map[string]bool{}
		for _, m := range c.VolumeMounts {
			if vols[m.Name] == nil && !claims[m.Name] {
				k.r.errorf(o.String(), "container %s mounts %s, which is neither a volume nor a volumeClaimTemplate", c.Name, m.Name)
			}
			if paths[m.MountPath] {
				k.r.errorf(o.String(), "container %s mounts two volumes at %s", c.Name, m.MountPath)
			}
			paths[m.MountPath] = true
			mounted[m.Name] = true
			if v := vols[m.Name]; v != nil && v.Secret != nil && !m.ReadOnly {
				k.r.errorf(o.String(), "container %s: mount secret volume %s readOnly", c.Name, m.Name)
			}
		}
	}
	for name := range vols {
		if !mounted[name] {
			k.r.errorf(o.String(), "volume %s is mounted by no container", name)
		}
	}
	for name := range claims {
		if !mounted[name] {
			k.r.errorf(o.String(), "volumeClaimTemplate %s is mounted by no container", name)
		}
	}
}

func (k *kcheck) annotations(w *Workload) {
	a := w.Template.Annotations
	if a["prometheus.io/scrape"] == "" {
		return
	}
	where := w.Obj.String()
	if a["prometheus.io/scrape"] != "true" || a["prometheus.io/path"] != "/metrics" {
		k.r.errorf(where, "prometheus.io annotations: want scrape \"true\" and path /metrics")
	}
	port, err := strconv.Atoi(a["prometheus.io/port"])
	if err != nil {
		k.r.errorf(where, "prometheus.io/port %q is not a number", a["prometheus.io/port"])
		return
	}
	for _, cmd := range w.Cmds {
		if _, p, err := splitAddr(cmd.Cfg.MetricsAddr); err == nil && int(p) == port {
			return
		}
	}
	k.r.errorf(where, "prometheus.io/port %d is no container's -metrics-addr port", port)
}

// container checks one backlogd container against its command line.
func (k *kcheck) container(w *Workload, c *corev1.Container, cmd *Command, where string) {
	// Security context and resources.
	sc := c.SecurityContext
	if sc == nil {
		k.r.errorf(where, "no securityContext")
	} else {
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			k.r.errorf(where, "set allowPrivilegeEscalation: false")
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			k.r.errorf(where, "set readOnlyRootFilesystem: true")
		}
		if sc.Privileged != nil && *sc.Privileged {
			k.r.errorf(where, "privileged")
		}
		if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0 {
			k.r.errorf(where, "drop ALL capabilities and add none")
		}
		if sc.RunAsUser != nil && *sc.RunAsUser == 0 {
			k.r.errorf(where, "runs as root")
		}
	}
	for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, hasReq := c.Resources.Requests[res]
		lim, hasLim := c.Resources.Limits[res]
		if !hasReq || !hasLim {
			k.r.errorf(where, "set both a request and a limit for %s", res)
		} else if req.Cmp(lim) > 0 {
			k.r.errorf(where, "%s request %s exceeds its limit %s", res, req.String(), lim.String())
		}
	}

	// Ports: each is a listen address of the command, and back.
	ports := map[int32]*corev1.ContainerPort{}
	names := map[string]bool{}
	for i := range c.Ports {
		p := &c.Ports[i]
		if ports[p.ContainerPort] != nil || (p.Name != "" && names[p.Name]) {
			k.r.errorf(where, "port %d (%s) declared twice", p.ContainerPort, p.Name)
		}
		if p.Name == "" {
			k.r.errorf(where, "port %d has no name", p.ContainerPort)
		}
		if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
			k.r.errorf(where, "port %d: backlogd speaks TCP only", p.ContainerPort)
		}
		ports[p.ContainerPort], names[p.Name] = p, true
	}
	listened := map[int32]bool{}
	listen := func(what, addr, wantName string) {
		host, port, err := splitAddr(addr)
		if err != nil {
			k.r.errorf(where, "%s %q: %v", what, addr, err)
			return
		}
		if !bindsAll(host) {
			k.r.errorf(where, "%s=%s listens on %s only: the kubelet's probes and the Service reach the pod's own address; listen on 0.0.0.0:%d", what, addr, host, port)
		}
		p := ports[port]
		switch {
		case p == nil:
			k.r.errorf(where, "%s=%s: no containerPort %d", what, addr, port)
		case p.Name != wantName:
			k.r.errorf(where, "%s=%s: containerPort %d is named %q, want %q", what, addr, port, p.Name, wantName)
		}
		if listened[port] {
			k.r.errorf(where, "two listeners on port %d", port)
		}
		listened[port] = true
	}
	if cmd.Sub == "" {
		grpcTargets := 0
		for _, t := range StoreTargets {
			if cmd.Serves(t) {
				grpcTargets++
			}
		}
		for _, t := range cmd.Cfg.Targets {
			name := "http"
			if t != app.TargetGateway {
				name = "grpc"
				if grpcTargets > 1 {
					name = "grpc-" + t
				}
			}
			if _, own := cmd.Given[listenFlag(t)]; !own && t != app.TargetGateway && strings.Contains(cmd.Addr(t), ",") {
				k.r.errorf(where, "-%s=%s lists several replicas: give this one its own -%s", flagOfTarget(t), cmd.Addr(t), listenFlag(t))
				continue
			}
			listen("-"+listenFlag(t), cmd.Listen(t), name)
		}
		if cmd.Cfg.MetricsAddr == "" {
			k.r.errorf(where, "set -metrics-addr (Prometheus scrapes every backlogd process)")
		} else {
			listen("-metrics-addr", cmd.Cfg.MetricsAddr, "metrics")
		}
	}
	for port, p := range ports {
		if !listened[port] {
			k.r.errorf(where, "containerPort %d (%s) is no listen address of the command line", port, p.Name)
		}
	}

	// Addresses this process dials.
	for _, t := range StoreTargets {
		if cmd.Sub != "restore" {
			k.dial(w, cmd, t, where)
		}
	}

	// Probes.
	k.probes(c, cmd, ports, where)

	// Files: the data dir on the claim, the keys in secrets.
	switch {
	case cmd.Stores() && cmd.Etcd():
		k.etcdFiles(w, c, cmd, where)
	case cmd.Stores():
		if !k.onClaim(w, c, cmd.Cfg.DataDir) {
			k.r.errorf(where, "-data-dir=%s is not the mountPath of a volumeClaimTemplate", cmd.Cfg.DataDir)
		}
	case cmd.Sub == "restore":
		if !k.onClaim(w, c, cmd.Cfg.DataDir) {
			k.r.errorf(where, "-data-dir=%s is not the mountPath of a persistentVolumeClaim", cmd.Cfg.DataDir)
		}
	case cmd.Sub == "backup":
		if m := mountOf(c, cmd.Dir); m == nil || m.ReadOnly {
			k.r.errorf(where, "-out=%s is not on a writable volume", cmd.Dir)
		}
	}
	if cmd.Stores() || cmd.Sub == "backup" {
		file, given := cmd.Given["service-token-file"]
		if !given {
			k.r.errorf(where, "set -service-token-file to the shared Secret: the default, a file in -data-dir, would give each process a token of its own")
		} else if ref, ok := k.secretFile(w, c, file, where); ok {
			k.tokenRefs[ref] = append(k.tokenRefs[ref], where)
		}
	} else if _, given := cmd.Given["service-token-file"]; given {
		k.r.errorf(where, "-service-token-file given to a process that does not use it (least privilege)")
	}
	if cmd.Serves(app.TargetVault) {
		if file, given := cmd.Given["vault-kek-file"]; !given {
			k.r.errorf(where, "the vault runs without -vault-kek-file")
		} else if _, ok := k.secretFile(w, c, file, where); ok {
			// The mode the kubelet gives the file: the volume's mode, and
			// with an fsGroup, group read on top (for a read-only volume it
			// ORs in 0440, whatever defaultMode says).
			mode := k.secretMode(w, c, file)
			if sc := w.pod().SecurityContext; sc != nil && sc.FSGroup != nil {
				mode |= 0o440
			}
			if err := KEKFileAccepted(mode); err != nil {
				k.r.errorf(where, "the kubelet gives %s mode %04o (a Secret volume in a pod with an fsGroup is always group-readable) and the vault refuses that mode: %v", file, mode, err)
			}
		}
	} else if _, given := cmd.Given["vault-kek-file"]; given {
		k.r.errorf(where, "-vault-kek-file given to a process that does not run the vault (least privilege)")
	}
}

func flagOfTarget(t string) string {
	if t == app.TargetGateway {
		return "http-addr"
	}
	return t + "-addr"
}

func listenFlag(t string) string {
	if t == app.TargetGateway {
		return "http-addr"
	}
	return t + "-listen-addr"
}

// dial checks the addresses cmd finds target t at: one, or a comma list of
// every replica (etcd mode).
func (k *kcheck) dial(w *Workload, cmd *Command, t, where string) {
	for _, addr := range strings.Split(cmd.Addr(t), ",") {
		k.dialOne(w, cmd, t, strings.TrimSpace(addr), where)
	}
}

func (k *kcheck) dialOne(w *Workload, cmd *Command, t, addr, where string) {
	host, port, err := splitAddr(addr)
	if err != nil {
		k.r.errorf(where, "-%s=%s: %v", flagOfTarget(t), addr, err)
		return
	}
	if bindsAll(host) || host == "localhost" || strings.HasPrefix(host, "127.") || host == "::1" {
		if !cmd.Serves(t) {
			k.r.errorf(where, "-%s=%s: this pod does not run %s, so it cannot find it on its own addresses; use the Service name", flagOfTarget(t), addr, t)
			return
		}
		// Found on this pod's own addresses: it must listen there.
		lhost, lport, err := splitAddr(cmd.Listen(t))
		if err == nil && (lport != port || !(bindsAll(lhost) || lhost == host)) {
			k.r.errorf(where, "-%s=%s: %s listens on %s, not there", flagOfTarget(t), addr, t, cmd.Listen(t))
		}
		return
	}
	if !k.s.Complete {
		return
	}
	name, rest, _ := strings.Cut(host, ".")
	if rest != "" && rest != w.Obj.Namespace && !strings.HasPrefix(rest, w.Obj.Namespace+".svc") {
		k.r.errorf(where, "-%s=%s: not a Service of namespace %q", flagOfTarget(t), addr, w.Obj.Namespace)
		return
	}
	svc := k.serviceNamed(name)
	if svc == nil {
		k.r.errorf(where, "-%s=%s: no Service %s in %s", flagOfTarget(t), addr, name, k.s.Name)
		return
	}
	var sp *corev1.ServicePort
	for i := range svc.Spec.Ports {
		if svc.Spec.Ports[i].Port == port {
			sp = &svc.Spec.Ports[i]
		}
	}
	if sp == nil {
		k.r.errorf(where, "-%s=%s: Service %s has no port %d", flagOfTarget(t), addr, name, port)
		return
	}
	found := false
	for _, dst := range k.wls {
		if !k.selects(svc.Spec.Selector, dst) {
			continue
		}
		c, dcmd := dst.serving(t)
		if c == nil {
			k.r.errorf(where, "-%s=%s: Service %s selects %s, which does not run %s", flagOfTarget(t), addr, name, dst.Obj, t)
			continue
		}
		cp := containerPort(c, sp.TargetPort)
		_, lport, _ := splitAddr(dcmd.Listen(t))
		if cp == nil || cp.ContainerPort != lport {
			k.r.errorf(where, "-%s=%s: Service %s port %d leads to %s, not to where %s listens (%s)", flagOfTarget(t), addr, name, port, sp.TargetPort.String(), dst.Obj, dcmd.Listen(t))
			continue
		}
		found = true
		if !k.allowed(dst, cp.ContainerPort, w) {
			k.r.errorf(where, "-%s=%s: no NetworkPolicy lets %s reach %s port %d", flagOfTarget(t), addr, w.Obj, dst.Obj, cp.ContainerPort)
		}
	}
	if !found {
		k.r.errorf(where, "-%s=%s: Service %s leads to no pod running %s", flagOfTarget(t), addr, name, t)
	}
}

func (k *kcheck) probes(c *corev1.Container, cmd *Command, ports map[int32]*corev1.ContainerPort, where string) {
	if cmd.Sub != "" {
		return
	}
	if c.LivenessProbe == nil || c.ReadinessProbe == nil {
		k.r.errorf(where, "needs a liveness and a readiness probe")
	}
	grpcPorts := map[int32]bool{}
	for _, t := range StoreTargets {
		if cmd.Serves(t) {
			_, p, _ := splitAddr(cmd.Listen(t))
			grpcPorts[p] = true
		}
	}
	var httpPort int32
	if cmd.Serves(app.TargetGateway) {
		_, httpPort, _ = splitAddr(cmd.Cfg.HTTPAddr)
	}
	for _, pr := range []struct {
		kind  string
		probe *corev1.Probe
	}{{"liveness", c.LivenessProbe}, {"readiness", c.ReadinessProbe}, {"startup", c.StartupProbe}} {
		p := pr.probe
		if p == nil {
			continue
		}
		w := where + " " + pr.kind + "Probe"
		switch {
		case p.GRPC != nil:
			if !grpcPorts[p.GRPC.Port] {
				k.r.errorf(w, "gRPC probe on port %d, where this process serves no gRPC service", p.GRPC.Port)
			}
			if p.GRPC.Service != nil && *p.GRPC.Service != "" {
				k.r.errorf(w, "probe the server's overall health (service \"\")")
			}
		case p.HTTPGet != nil:
			cp := containerPort(c, p.HTTPGet.Port)
			if httpPort == 0 || cp == nil || cp.ContainerPort != httpPort {
				k.r.errorf(w, "HTTP probe on port %s, which is not the gateway's -http-addr", p.HTTPGet.Port.String())
			}
			if p.HTTPGet.Scheme != "" && p.HTTPGet.Scheme != corev1.URISchemeHTTP {
				k.r.errorf(w, "the gateway speaks plain HTTP")
			}
			switch p.HTTPGet.Path {
			case "/healthz":
			case "/readyz":
				if pr.kind == "liveness" {
					k.r.errorf(w, "/readyz fails while a service is down: a liveness probe on it would restart a healthy gateway; use /healthz")
				}
			default:
				k.r.errorf(w, "path %q: the gateway answers /healthz and /readyz", p.HTTPGet.Path)
			}
		default:
			k.r.errorf(w, "use a grpc or httpGet probe (the image has no shell, and a TCP connect proves little)")
		}
	}
}

// containerPort resolves a named or numbered port on c.
func containerPort(c *corev1.Container, p intstr.IntOrString) *corev1.ContainerPort {
	for i := range c.Ports {
		cp := &c.Ports[i]
		if (p.Type == intstr.String && cp.Name == p.StrVal) || (p.Type == intstr.Int && cp.ContainerPort == p.IntVal) {
			return cp
		}
	}
	return nil
}

// mountOf is the mount of c that holds file (the longest prefix).
func mountOf(c *corev1.Container, file string) *corev1.VolumeMount {
	var best *corev1.VolumeMount
	for i := range c.VolumeMounts {
		m := &c.VolumeMounts[i]
		mp := strings.TrimSuffix(m.MountPath, "/")
		if (file == mp || strings.HasPrefix(file, mp+"/")) && (best == nil || len(mp) > len(best.MountPath)) {
			best = m
		}
	}
	return best
}

func (k *kcheck) onClaim(w *Workload, c *corev1.Container, dir string) bool {
	dir = path.Clean(dir)
	for _, m := range c.VolumeMounts {
		if path.Clean(m.MountPath) != dir || m.ReadOnly {
			continue
		}
		for _, pvc := range w.Claims {
			if pvc.Name == m.Name {
				return true
			}
		}
		for _, v := range w.pod().Volumes {
			if v.Name == m.Name && v.PersistentVolumeClaim != nil {
				return true
			}
		}
	}
	return false
}

// secretFile checks that file is a key of a Secret mounted in c and returns
// "secret/key".
func (k *kcheck) secretFile(w *Workload, c *corev1.Container, file, where string) (string, bool) {
	m := mountOf(c, file)
	if m == nil {
		k.r.errorf(where, "%s is on no volume", file)
		return "", false
	}
	var vol *corev1.Volume
	for i := range w.pod().Volumes {
		if w.pod().Volumes[i].Name == m.Name {
			vol = &w.pod().Volumes[i]
		}
	}
	if vol == nil || vol.Secret == nil {
		k.r.errorf(where, "%s is not on a Secret volume", file)
		return "", false
	}
	if m.SubPath != "" {
		k.r.errorf(where, "%s: a subPath mount of a Secret never sees the Secret change", file)
	}
	rel := strings.TrimPrefix(strings.TrimPrefix(file, strings.TrimSuffix(m.MountPath, "/")), "/")
	key := rel
	if len(vol.Secret.Items) > 0 {
		key = ""
		for _, it := range vol.Secret.Items {
			if it.Path == rel {
				key = it.Key
			}
		}
		if key == "" {
			k.r.errorf(where, "%s: Secret volume %s projects no item at %s", file, vol.Name, rel)
			return "", false
		}
	}
	if rel == "" || strings.Contains(rel, "/") {
		k.r.errorf(where, "%s: name a file directly in the Secret's mount", file)
		return "", false
	}
	return vol.Secret.SecretName + "/" + key, true
}

// secretMode is the mode a Secret volume gives file (item mode, else
// defaultMode, else the API default 0644).
func (k *kcheck) secretMode(w *Workload, c *corev1.Container, file string) os.FileMode {
	m := mountOf(c, file)
	for _, v := range w.pod().Volumes {
		if m == nil || v.Name != m.Name || v.Secret == nil {
			continue
		}
		rel := strings.TrimPrefix(strings.TrimPrefix(file, strings.TrimSuffix(m.MountPath, "/")), "/")
		for _, it := range v.Secret.Items {
			if it.Path == rel && it.Mode != nil {
				return os.FileMode(*it.Mode)
			}
		}
		if v.Secret.DefaultMode != nil {
			return os.FileMode(*v.Secret.DefaultMode)
		}
	}
	return 0o644
}

// KEKFileAccepted reports whether the vault loads a key-encryption key file
// of the given mode, by writing one and loading it with vault.LoadKEKFile.
func KEKFileAccepted(mode os.FileMode) error {
	dir, err := os.MkdirTemp("", "deploycheck-kek-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "kek")
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return err
	}
	if err := os.WriteFile(path, key, 0o600); err != nil {
		return err
	}
	if err := os.Chmod(path, mode); err != nil {
		return err
	}
	if _, err = vault.LoadKEKFile(path); err != nil {
		return errors.New(strings.ReplaceAll(err.Error(), path, "<file>"))
	}
	return nil
}

func (k *kcheck) serviceNamed(name string) *corev1.Service {
	for _, o := range k.s.Objects {
		if svc, ok := o.Value.(*corev1.Service); ok && o.Name == name {
			return svc
		}
	}
	return nil
}

// selects: a Service-style selector (a map) selects w's pods.
func (k *kcheck) selects(sel map[string]string, w *Workload) bool {
	return len(sel) > 0 && labels.SelectorFromSet(sel).Matches(labels.Set(w.Template.Labels))
}

func (k *kcheck) selectedBy(sel *metav1.LabelSelector) []*Workload {
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		return nil
	}
	var out []*Workload
	for _, w := range k.wls {
		if s.Matches(labels.Set(w.Template.Labels)) {
			out = append(out, w)
		}
	}
	return out
}

func (k *kcheck) service(o *Object, svc *corev1.Service) {
	if svc.Spec.Type != "" && svc.Spec.Type != corev1.ServiceTypeClusterIP {
		k.r.errorf(o.String(), "type %s: keep Services ClusterIP and expose the gateway through an Ingress", svc.Spec.Type)
	}
	if len(svc.Spec.Selector) == 0 {
		k.r.errorf(o.String(), "no selector")
		return
	}
	var sel []*Workload
	for _, w := range k.wls {
		if k.selects(svc.Spec.Selector, w) {
			sel = append(sel, w)
		}
	}
	if len(sel) == 0 {
		k.r.errorf(o.String(), "selects no pod")
	}
	for _, sp := range svc.Spec.Ports {
		if sp.Name == "" {
			k.r.errorf(o.String(), "port %d has no name", sp.Port)
		}
		if sp.TargetPort.Type == intstr.Int && sp.TargetPort.IntVal == 0 {
			k.r.errorf(o.String(), "port %d: set targetPort (by name)", sp.Port)
			continue
		}
		for _, w := range sel {
			var cp *corev1.ContainerPort
			for i := range w.pod().Containers {
				if p := containerPort(&w.pod().Containers[i], sp.TargetPort); p != nil {
					cp = p
				}
			}
			switch {
			case cp == nil:
				k.r.errorf(o.String(), "port %s: %s has no containerPort %s", sp.Name, w.Obj, sp.TargetPort.String())
			case cp.ContainerPort != sp.Port:
				k.r.errorf(o.String(), "port %s: Service port %d leads to containerPort %d: keep them equal, as the address flags name one port", sp.Name, sp.Port, cp.ContainerPort)
			}
		}
	}
}

func (k *kcheck) networkPolicy(o *Object, np *networkingv1.NetworkPolicy) {
	sel := k.selectedBy(&np.Spec.PodSelector)
	if len(sel) == 0 {
		k.r.errorf(o.String(), "podSelector selects no pod")
	}
	if !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) {
		k.r.errorf(o.String(), "policyTypes must include Ingress")
	}
	known := append(slices.Clone(app.AllTargets), ComponentAllInOne, ComponentBackup)
	for i, rule := range np.Spec.Ingress {
		where := fmt.Sprintf("%s ingress[%d]", o, i)
		if len(rule.Ports) == 0 {
			k.r.errorf(where, "allows every port: name them")
		}
		kinds := map[string]bool{} // http, grpc, metrics
		for _, p := range rule.Ports {
			if p.Port == nil {
				k.r.errorf(where, "a rule port without a port")
				continue
			}
			for _, w := range sel {
				kind := portKind(w, *p.Port)
				if kind == "" {
					k.r.errorf(where, "port %s is not a port of %s", p.Port.String(), w.Obj)
				}
				kinds[kind] = true
			}
		}
		open := len(rule.From) == 0
		if open && (kinds["grpc"] || kinds["metrics"]) {
			k.r.errorf(where, "opens a gRPC or metrics port to every peer: only the gateway's HTTP port may be open")
		}
		for _, peer := range rule.From {
			if peer.IPBlock != nil {
				k.r.errorf(where, "ipBlock peers: select pods or namespaces")
			}
			switch {
			case kinds["metrics"]:
				if peer.PodSelector != nil || peer.NamespaceSelector == nil || len(peer.NamespaceSelector.MatchLabels)+len(peer.NamespaceSelector.MatchExpressions) == 0 {
					k.r.errorf(where, "metrics: allow a labelled monitoring namespace only")
				}
			case kinds["grpc"]:
				if peer.NamespaceSelector != nil || peer.PodSelector == nil {
					k.r.errorf(where, "gRPC: allow pods of this deployment only (a podSelector, no namespaceSelector)")
					continue
				}
				ps, err := metav1.LabelSelectorAsSelector(peer.PodSelector)
				if err != nil || ps.Empty() {
					k.r.errorf(where, "gRPC: an empty podSelector allows every pod")
					continue
				}
				for _, c := range known {
					if ps.Matches(labels.Set{LabelComponent: c}) || ps.Matches(labels.Set{LabelComponent: c, LabelPartOf: "other"}) {
						k.r.errorf(where, "gRPC: the podSelector must require %s=backlog", LabelPartOf)
						break
					}
				}
				for _, req := range peer.PodSelector.MatchExpressions {
					if req.Key == LabelComponent {
						for _, v := range req.Values {
							if !slices.Contains(known, v) {
								k.r.errorf(where, "component %q is no component of this deployment", v)
							}
						}
					}
				}
				if v, ok := peer.PodSelector.MatchLabels[LabelComponent]; ok && !slices.Contains(known, v) {
					k.r.errorf(where, "component %q is no component of this deployment", v)
				}
			}
		}
	}
}

// portKind says what a NetworkPolicy port is on w: "http", "grpc",
// "metrics", or "" when w has no such port.
func portKind(w *Workload, p intstr.IntOrString) string {
	for name, cmd := range w.Cmds {
		cp := containerPort(w.container(name), p)
		if cp == nil {
			continue
		}
		if _, mp, err := splitAddr(cmd.Cfg.MetricsAddr); err == nil && mp == cp.ContainerPort {
			return "metrics"
		}
		for _, t := range cmd.Cfg.Targets {
			if _, lp, err := splitAddr(cmd.Listen(t)); err == nil && lp == cp.ContainerPort {
				if t == app.TargetGateway {
					return "http"
				}
				return "grpc"
			}
		}
		return "other"
	}
	return ""
}

// allowed reports whether some NetworkPolicy lets from's pods reach dst's
// containerPort port.
func (k *kcheck) allowed(dst *Workload, port int32, from *Workload) bool {
	for _, o := range k.s.Objects {
		np, ok := o.Value.(*networkingv1.NetworkPolicy)
		if !ok || !slices.Contains(k.selectedBy(&np.Spec.PodSelector), dst) {
			continue
		}
		for _, rule := range np.Spec.Ingress {
			portOK := len(rule.Ports) == 0
			for _, p := range rule.Ports {
				for i := range dst.pod().Containers {
					if p.Port != nil {
						if cp := containerPort(&dst.pod().Containers[i], *p.Port); cp != nil && cp.ContainerPort == port {
							portOK = true
						}
					}
				}
			}
			if !portOK {
				continue
			}
			if len(rule.From) == 0 {
				return true
			}
			for _, peer := range rule.From {
				if peer.PodSelector != nil && peer.NamespaceSelector == nil {
					if ps, err := metav1.LabelSelectorAsSelector(peer.PodSelector); err == nil && ps.Matches(labels.Set(from.Template.Labels)) {
						return true
					}
				}
			}
		}
	}
	return false
}

func (k *kcheck) pdb(o *Object, pdb *policyv1.PodDisruptionBudget) {
	if pdb.Spec.Selector == nil {
		k.r.errorf(o.String(), "no selector")
		return
	}
	sel := k.selectedBy(pdb.Spec.Selector)
	if len(sel) == 0 {
		k.r.errorf(o.String(), "selects no pod")
	}
	for _, w := range sel {
		if w.Obj.Kind != "Deployment" && !k.etcdMode(w) {
			k.r.errorf(o.String(), "selects %s: a budget for a one-replica StatefulSet blocks every node drain", w.Obj)
			continue
		}
		if m := pdb.Spec.MinAvailable; m != nil && m.Type == intstr.Int && w.Replicas != nil && m.IntVal >= *w.Replicas {
			k.r.errorf(o.String(), "minAvailable %d leaves no disruption for %d replicas", m.IntVal, *w.Replicas)
		}
		if m := pdb.Spec.MaxUnavailable; m != nil && m.Type == intstr.Int && m.IntVal < 1 {
			k.r.errorf(o.String(), "maxUnavailable %d blocks every node drain", m.IntVal)
		}
	}
}

// overlaps: no workload's selector takes another's pods.
func (k *kcheck) overlaps() {
	for _, a := range k.wls {
		if a.Selector == nil {
			continue
		}
		for _, b := range k.selectedBy(a.Selector) {
			if b != a && b.Selector != nil {
				k.r.errorf(a.Obj.String(), "its selector also selects the pods of %s", b.Obj)
			}
		}
	}
}

// complete: a whole deployment runs every target exactly where the others
// look for it, all with one service token, in one namespace.
func (k *kcheck) complete() {
	where := k.s.Name
	for _, t := range app.AllTargets {
		var by []string
		for _, w := range k.wls {
			if c, _ := w.serving(t); c != nil {
				by = append(by, w.Obj.String())
			}
		}
		switch {
		case len(by) == 0:
			k.r.errorf(where, "no pod runs %s", t)
		case len(by) > 1 && t != app.TargetGateway:
			k.r.errorf(where, "%s runs in %d workloads (%s): its store has one writer", t, len(by), strings.Join(by, ", "))
		}
	}
	k.etcdComplete()
	if len(k.tokenRefs) > 1 {
		var refs []string
		for _, ref := range sortedKeys(k.tokenRefs) {
			refs = append(refs, fmt.Sprintf("%s (%s)", ref, strings.Join(k.tokenRefs[ref], "; ")))
		}
		k.r.errorf(where, "the processes use different service tokens: %s", strings.Join(refs, ", "))
	}
	var nss []string
	for _, o := range k.s.Objects {
		if o.Kind == "Namespace" {
			nss = append(nss, o.Name)
		}
	}
	if len(nss) != 1 {
		k.r.errorf(where, "want exactly one Namespace, have %v", nss)
	}
	for _, o := range k.s.Objects {
		if o.Kind != "Namespace" && (len(nss) == 0 || o.Namespace != nss[0]) {
			k.r.errorf(o.String(), "namespace %q is not the overlay's namespace", o.Namespace)
		}
	}
	// Every port of every server pod is reachable by someone: by the
	// siblings or a backup job (gRPC), by any peer (HTTP), by monitoring.
	for _, w := range k.wls {
		for i := range w.pod().Containers {
			for _, p := range w.pod().Containers[i].Ports {
				if !k.covered(w, p.ContainerPort) {
					k.r.errorf(w.Obj.String(), "no NetworkPolicy allows anyone to port %d (%s)", p.ContainerPort, p.Name)
				}
			}
		}
	}
}

// covered: some NetworkPolicy selecting w lets some peer reach port.
func (k *kcheck) covered(w *Workload, port int32) bool {
	for _, o := range k.s.Objects {
		np, ok := o.Value.(*networkingv1.NetworkPolicy)
		if !ok || !slices.Contains(k.selectedBy(&np.Spec.PodSelector), w) {
			continue
		}
		for _, rule := range np.Spec.Ingress {
			for _, p := range rule.Ports {
				for i := range w.pod().Containers {
					if p.Port != nil {
						if cp := containerPort(&w.pod().Containers[i], *p.Port); cp != nil && cp.ContainerPort == port {
							return true
						}
					}
				}
			}
		}
	}
	return false
}
