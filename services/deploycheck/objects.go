package deploycheck

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	kustypes "sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// Object is one Kubernetes resource decoded into its API type.
type Object struct {
	Where     string // the file, or the kustomization directory it was rendered from
	Kind      string
	Name      string
	Namespace string
	Value     metav1.Object // *appsv1.StatefulSet, *corev1.Service, ...
}

func (o *Object) String() string { return o.Where + ": " + o.Kind + "/" + o.Name }

// newObject returns an empty value of the API type for apiVersion and kind,
// for the kinds a deploy file may hold.
func newObject(apiVersion, kind string) (metav1.Object, error) {
	switch apiVersion + " " + kind {
	case "v1 Namespace":
		return &corev1.Namespace{}, nil
	case "v1 Service":
		return &corev1.Service{}, nil
	case "v1 ConfigMap":
		return &corev1.ConfigMap{}, nil
	case "apps/v1 StatefulSet":
		return &appsv1.StatefulSet{}, nil
	case "apps/v1 Deployment":
		return &appsv1.Deployment{}, nil
	case "networking.k8s.io/v1 NetworkPolicy":
		return &networkingv1.NetworkPolicy{}, nil
	case "policy/v1 PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, nil
	case "batch/v1 Job":
		return &batchv1.Job{}, nil
	case "batch/v1 CronJob":
		return &batchv1.CronJob{}, nil
	}
	return nil, fmt.Errorf("apiVersion %q kind %q is not a kind deploycheck knows (add it to newObject)", apiVersion, kind)
}

var docSep = regexp.MustCompile(`(?m)^---[ \t]*$`)

// DecodeAll decodes every YAML document in data strictly: a field the API
// type does not have, a duplicate key or a value of the wrong type fails.
func DecodeAll(where string, data []byte) ([]*Object, error) {
	var out []*Object
	for i, doc := range docSep.Split(string(data), -1) {
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			return nil, fmt.Errorf("%s: document %d: %v", where, i+1, err)
		}
		v, err := newObject(tm.APIVersion, tm.Kind)
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %v", where, i+1, err)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), v); err != nil {
			return nil, fmt.Errorf("%s: %s: %v", where, tm.Kind, err)
		}
		if v.GetName() == "" {
			return nil, fmt.Errorf("%s: %s without metadata.name", where, tm.Kind)
		}
		out = append(out, &Object{Where: where, Kind: tm.Kind, Name: v.GetName(), Namespace: v.GetNamespace(), Value: v})
	}
	return out, nil
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, l := range strings.Split(doc, "\n") {
		if t := strings.TrimSpace(l); t != "" && !strings.HasPrefix(t, "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// Render builds a kustomization directory with kustomize's own library, as
// `kubectl apply -k` would, and decodes every resource strictly.
func Render(dir, where string) ([]*Object, error) {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, fmt.Errorf("%s: kustomize build: %v", where, err)
	}
	var out []*Object
	for _, res := range m.Resources() {
		y, err := res.AsYAML()
		if err != nil {
			return nil, fmt.Errorf("%s: %v", where, err)
		}
		objs, err := DecodeAll(where+" (rendered)", y)
		if err != nil {
			return nil, err
		}
		out = append(out, objs...)
	}
	return out, nil
}

// KustomizeTree checks the layout under deploy/kubernetes: every YAML file
// decodes strictly; every directory with YAML files has a kustomization.yaml
// that decodes strictly into kustomize's own type, lists only paths that
// exist and lists every YAML file beside it; every base is used by an
// overlay. It returns the kustomization directories, relative to root.
func KustomizeTree(r *Report, root string) []string {
	kroot := filepath.Join(root, "deploy", "kubernetes")
	var dirs []string
	used := map[string]bool{} // directories some kustomization lists
	err := filepath.WalkDir(kroot, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(root, path)
		entries, err := os.ReadDir(path)
		if err != nil {
			return err
		}
		var yamls []string
		hasKust := false
		for _, e := range entries {
			n := e.Name()
			switch {
			case e.IsDir():
			case n == "kustomization.yaml":
				hasKust = true
			case n == "kustomization.yml" || n == "Kustomization":
				r.errorf(filepath.Join(rel, n), "name it kustomization.yaml")
			case strings.HasSuffix(n, ".yaml") || strings.HasSuffix(n, ".yml"):
				yamls = append(yamls, n)
			}
		}
		for _, n := range yamls {
			b, err := os.ReadFile(filepath.Join(path, n))
			if err != nil {
				return err
			}
			if _, err := DecodeAll(filepath.Join(rel, n), b); err != nil {
				r.add(err)
			}
		}
		if !hasKust {
			if len(yamls) > 0 {
				r.errorf(rel, "YAML files but no kustomization.yaml")
			}
			return nil
		}
		dirs = append(dirs, rel)
		kf := filepath.Join(rel, "kustomization.yaml")
		b, err := os.ReadFile(filepath.Join(path, "kustomization.yaml"))
		if err != nil {
			return err
		}
		var k kustypes.Kustomization
		if err := yaml.UnmarshalStrict(b, &k); err != nil {
			r.errorf(kf, "%v", err)
			return nil
		}
		if k.APIVersion != kustypes.KustomizationVersion || k.Kind != kustypes.KustomizationKind {
			r.errorf(kf, "want apiVersion %s, kind %s", kustypes.KustomizationVersion, kustypes.KustomizationKind)
		}
		if len(k.Resources) == 0 {
			r.errorf(kf, "lists no resources")
		}
		for _, res := range k.Resources {
			p := filepath.Join(path, res)
			fi, err := os.Stat(p)
			switch {
			case err != nil:
				r.errorf(kf, "resource %s does not exist", res)
			case fi.IsDir():
				if _, err := os.Stat(filepath.Join(p, "kustomization.yaml")); err != nil {
					r.errorf(kf, "resource %s is a directory without kustomization.yaml", res)
				}
				used[filepath.Clean(p)] = true
			}
		}
		for _, n := range yamls {
			if !slices.Contains(k.Resources, n) {
				r.errorf(kf, "does not list %s, which is beside it", n)
			}
		}
		return nil
	})
	if err != nil {
		r.errorf("deploy/kubernetes", "%v", err)
	}
	for _, d := range dirs {
		if strings.HasPrefix(d, filepath.Join("deploy", "kubernetes", "base")+string(filepath.Separator)) && !used[filepath.Join(root, d)] {
			r.errorf(d, "no overlay uses this base")
		}
	}
	if !slices.Contains(dirs, filepath.Join("deploy", "kubernetes", "overlays", "split")) ||
		!slices.Contains(dirs, filepath.Join("deploy", "kubernetes", "overlays", "all-in-one")) {
		r.errorf("deploy/kubernetes/overlays", "want the overlays split and all-in-one")
	}
	return dirs
}
