// render: a stand-in for `helm template` where the helm binary cannot be installed. It
// renders a chart directory the way Helm 3 does, with the same engine (Go text/template)
// and the same function library (sprig, plus Helm's include/tpl/toYaml/required/...):
//   - values: the chart's values.yaml, then each -f file deep-merged over it (maps merge,
//     everything else replaces; null deletes); subcharts in charts/<name>/ get their own
//     defaults coalesced under .Values.<name> of the parent
//   - every file under templates/ (and subcharts' templates/) is parsed into one template
//     set; those not starting with "_" are executed; blank results are dropped
//   - missing keys render as empty, like Helm's non-strict mode
//   - .Release (Name, Namespace, Service=Helm, IsInstall), .Chart (from Chart.yaml),
//     .Capabilities.KubeVersion (from -kube-version), .Template.Name/.BasePath, .Files is empty
// Output, on stdout as JSON: {"values": merged values, "manifests": {template path: text},
// "notes": NOTES.txt rendered}. Not implemented: lookup (returns an empty map, as helm
// template does), .Files contents, hooks ordering, --set.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"sigs.k8s.io/yaml"
)

type chart struct {
	dir      string
	meta     map[string]interface{}
	defaults map[string]interface{}
	subs     []*chart
}

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "render:", err)
		os.Exit(1)
	}
}

func readYAML(path string) map[string]interface{} {
	out := map[string]interface{}{}
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return out
	}
	must(err)
	must(yaml.Unmarshal(b, &out))
	if out == nil {
		out = map[string]interface{}{}
	}
	return out
}

func loadChart(dir string) *chart {
	c := &chart{dir: dir, meta: readYAML(filepath.Join(dir, "Chart.yaml")), defaults: readYAML(filepath.Join(dir, "values.yaml"))}
	if c.meta["name"] == nil {
		must(fmt.Errorf("%s: Chart.yaml has no name", dir))
	}
	subdirs, _ := filepath.Glob(filepath.Join(dir, "charts", "*", "Chart.yaml"))
	sort.Strings(subdirs)
	for _, s := range subdirs {
		c.subs = append(c.subs, loadChart(filepath.Dir(s)))
	}
	return c
}

// merge lays src over dst like Helm's coalescing: maps merge key by key, null deletes.
func merge(dst, src map[string]interface{}) map[string]interface{} {
	out := map[string]interface{}{}
	for k, v := range dst {
		out[k] = v
	}
	for k, v := range src {
		if v == nil {
			delete(out, k)
			continue
		}
		sm, sok := v.(map[string]interface{})
		dm, dok := out[k].(map[string]interface{})
		if sok && dok {
			out[k] = merge(dm, sm)
		} else {
			out[k] = v
		}
	}
	return out
}

// coalesce gives each subchart its defaults under the parent's key of the same name.
func coalesce(c *chart, vals map[string]interface{}) map[string]interface{} {
	vals = merge(c.defaults, vals)
	for _, s := range c.subs {
		name := s.meta["name"].(string)
		mine, _ := vals[name].(map[string]interface{})
		vals[name] = coalesce(s, mine)
	}
	return vals
}

func capitalized(m map[string]interface{}) map[string]interface{} {
	out := map[string]interface{}{}
	for k, v := range m {
		out[strings.ToUpper(k[:1])+k[1:]] = v
	}
	return out
}

type job struct {
	name string
	data map[string]interface{}
}

func main() {
	var files multi
	release := flag.String("name", "release", "release name")
	namespace := flag.String("namespace", "default", "release namespace")
	kube := flag.String("kube-version", "v1.30.0", "Kubernetes version for .Capabilities")
	flag.Var(&files, "f", "values file (repeatable)")
	flag.Parse()
	if flag.NArg() != 1 {
		must(fmt.Errorf("usage: render [-f values.yaml]... CHART_DIR"))
	}
	root := loadChart(flag.Arg(0))
	user := map[string]interface{}{}
	for _, f := range files {
		user = merge(user, readYAML(f))
	}
	values := coalesce(root, user)

	tpl := template.New("gotpl")
	funcs := sprig.TxtFuncMap()
	// Helm drops these from sprig.
	delete(funcs, "env")
	delete(funcs, "expandenv")
	includes := map[string]int{}
	funcs["include"] = func(name string, data interface{}) (string, error) {
		if includes[name] > 100 {
			return "", fmt.Errorf("include %q: too deep", name)
		}
		includes[name]++
		defer func() { includes[name]-- }()
		var buf bytes.Buffer
		err := tpl.ExecuteTemplate(&buf, name, data)
		return strings.ReplaceAll(buf.String(), "<no value>", ""), err
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		t, err := tpl.Clone()
		if err != nil {
			return "", err
		}
		t, err = t.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		err = t.Execute(&buf, data)
		return strings.ReplaceAll(buf.String(), "<no value>", ""), err
	}
	funcs["toYaml"] = func(v interface{}) string {
		b, err := yaml.Marshal(v)
		if err != nil {
			return ""
		}
		return strings.TrimSuffix(string(b), "\n")
	}
	funcs["fromYaml"] = func(s string) map[string]interface{} {
		m := map[string]interface{}{}
		if err := yaml.Unmarshal([]byte(s), &m); err != nil {
			m["Error"] = err.Error()
		}
		return m
	}
	funcs["toJson"] = func(v interface{}) string {
		b, _ := json.Marshal(v)
		return string(b)
	}
	funcs["fromJson"] = func(s string) map[string]interface{} {
		m := map[string]interface{}{}
		if err := json.Unmarshal([]byte(s), &m); err != nil {
			m["Error"] = err.Error()
		}
		return m
	}
	funcs["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil || v == "" {
			return v, fmt.Errorf(msg)
		}
		return v, nil
	}
	funcs["fail"] = func(msg string) (string, error) { return "", fmt.Errorf(msg) }
	funcs["lookup"] = func(...string) (map[string]interface{}, error) { return map[string]interface{}{}, nil }
	tpl.Funcs(funcs).Option("missingkey=zero")

	ver := strings.TrimPrefix(*kube, "v")
	parts := strings.SplitN(ver, ".", 3)
	caps := map[string]interface{}{
		"KubeVersion": map[string]interface{}{"Version": *kube, "GitVersion": *kube, "Major": parts[0], "Minor": parts[1]},
		"APIVersions": []string{},
	}
	rel := map[string]interface{}{"Name": *release, "Namespace": *namespace, "Service": "Helm", "IsInstall": true, "IsUpgrade": false, "Revision": 1}

	var jobs []job
	notes := ""
	var walk func(c *chart, vals map[string]interface{}, prefix string)
	walk = func(c *chart, vals map[string]interface{}, prefix string) {
		name := c.meta["name"].(string)
		base := prefix + name + "/templates"
		paths, _ := filepath.Glob(filepath.Join(c.dir, "templates", "*"))
		sort.Strings(paths)
		for _, p := range paths {
			b, err := os.ReadFile(p)
			must(err)
			tname := base + "/" + filepath.Base(p)
			_, err = tpl.New(tname).Parse(string(b))
			must(err)
			data := map[string]interface{}{
				"Values": vals, "Release": rel, "Chart": capitalized(c.meta), "Capabilities": caps,
				"Template": map[string]interface{}{"Name": tname, "BasePath": base}, "Files": map[string]interface{}{},
			}
			if strings.HasPrefix(filepath.Base(p), "_") {
				continue
			}
			jobs = append(jobs, job{tname, data})
		}
		for _, s := range c.subs {
			sv, _ := vals[s.meta["name"].(string)].(map[string]interface{})
			walk(s, sv, prefix+name+"/charts/")
		}
	}
	walk(root, values, "")

	manifests := map[string]string{}
	for _, j := range jobs {
		var buf bytes.Buffer
		must(tpl.ExecuteTemplate(&buf, j.name, j.data))
		text := strings.ReplaceAll(buf.String(), "<no value>", "")
		if strings.HasSuffix(j.name, "/NOTES.txt") {
			if !strings.Contains(j.name, "/charts/") {
				notes = text
			}
			continue
		}
		if strings.TrimSpace(text) != "" {
			manifests[j.name] = text
		}
	}
	out, err := json.Marshal(map[string]interface{}{"values": values, "manifests": manifests, "notes": notes})
	must(err)
	os.Stdout.Write(out)
}

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }
