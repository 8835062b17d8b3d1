{{/*
The sidecar, for this chart's Deployment and for charts that add sluice to their own pods:

  spec:
    terminationGracePeriodSeconds: {{ include "sluice.sidecar.terminationGracePeriodSeconds" $ctx }}
    initContainers:
      {{- include "sluice.sidecar.initContainers" $ctx | nindent 6 }}
    containers:
      - name: app ...
      {{- include "sluice.sidecar.containers" $ctx | nindent 6 }}
    volumes:
      {{- include "sluice.sidecar.volumes" $ctx | nindent 6 }}

and one more manifest: {{ include "sluice.sidecar.configMap" $ctx }}
where $ctx is (dict "root" $ "values" .Values.sluice). The pod template's annotations should
include {{ include "sluice.sidecar.podAnnotations" $ctx }}: pods roll when a setting changes
that sluice reads only at start.
*/}}

{{/* sluice's config file, in its own format (validated by config/sluice.schema.json). */}}
{{- define "sluice.config" -}}
{{- $v := .values -}}
{{- $catchAll := dict "name" "app" "match" (dict) "forward" (dict "cluster" "app") -}}
{{- $listener := dict "name" "inbound" "address" (printf "0.0.0.0:%d" (int $v.ports.proxy)) "routes" (concat ($v.routes | default list) (list $catchAll)) -}}
{{- with $v.timeouts }}{{ $_ := set $listener "timeouts" . }}{{ end -}}
{{- with $v.limits }}{{ $_ := set $listener "limits" . }}{{ end -}}
{{- if $v.tls.secretName -}}
{{- $ltls := dict "certificates" (list (dict "cert" "/etc/sluice-tls/listener/tls.crt" "key" "/etc/sluice-tls/listener/tls.key")) "min_version" $v.tls.minVersion -}}
{{- if $v.tls.clientCA.secretName }}{{ $_ := set $ltls "client_certificate" (dict "ca" (printf "/etc/sluice-tls/client-ca/%s" $v.tls.clientCA.key) "required" $v.tls.clientCA.required) }}{{ end -}}
{{- $_ := set $listener "tls" $ltls -}}
{{- end -}}
{{- $app := dict "endpoints" (list (printf "127.0.0.1:%d" (int $v.app.port))) -}}
{{- if $v.upstreamTLS.enabled -}}
{{- $utls := dict -}}
{{- with $v.upstreamTLS.serverName }}{{ $_ := set $utls "server_name" . }}{{ end -}}
{{- if $v.upstreamTLS.caSecretName }}{{ $_ := set $utls "ca" "/etc/sluice-tls/upstream-ca/ca.crt" }}{{ end -}}
{{- if $v.upstreamTLS.clientCertSecretName }}{{ $_ := set $utls "cert" "/etc/sluice-tls/upstream-client/tls.crt" }}{{ $_ := set $utls "key" "/etc/sluice-tls/upstream-client/tls.key" }}{{ end -}}
{{- $_ := set $app "tls" $utls -}}
{{- end -}}
{{- $cfg := dict
      "drain_timeout" (printf "%ds" (int $v.drainTimeoutSeconds))
      "workers" $v.workers
      "access_log" $v.accessLog
      "admin" (dict "address" (printf "%s:%d" $v.admin.bindAddress (int $v.ports.admin)))
      "listeners" (list $listener)
      "clusters" (dict "app" $app)
-}}
{{- toYaml (mergeOverwrite $cfg (deepCopy ($v.config | default dict))) -}}
{{- end -}}

{{/*
Settings sluice reads only at start (workers, telemetry; see docs/config.md): their checksum on
the pod template rolls the pods when they change. Everything else in the ConfigMap is reloaded
in place, without a restart.
*/}}
{{- define "sluice.sidecar.podAnnotations" -}}
{{- $v := .values -}}
checksum/sluice-restart: {{ toYaml (dict "workers" $v.workers "telemetry" (($v.config | default dict).telemetry)) | sha256sum }}
{{- end -}}

{{- define "sluice.sidecar.configMap" -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "sluice.fullname" . }}-config
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "sluice.labels" . | nindent 4 }}
data:
  sluice.yaml: |
    {{- include "sluice.config" . | nindent 4 }}
{{- end -}}

{{- define "sluice.sidecar.terminationGracePeriodSeconds" -}}
{{- add (int .values.preStopSleepSeconds) (int .values.drainTimeoutSeconds) 5 -}}
{{- end -}}

{{- define "sluice.sidecar.container" -}}
{{- $v := .values -}}
- name: sluice
  image: {{ include "sluice.image" . | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- if $v.sidecar.native }}
  restartPolicy: Always
  {{- end }}
  args: ["--config", "/etc/sluice/sluice.yaml"]
  ports:
    - name: sluice
      containerPort: {{ int $v.ports.proxy }}
      protocol: TCP
    - name: sluice-admin
      containerPort: {{ int $v.ports.admin }}
      protocol: TCP
  env:
    - name: SLUICE_LOG_FORMAT
      value: json
    {{- if $v.otel.endpoint }}
    - name: K8S_POD_NAME
      valueFrom: { fieldRef: { fieldPath: metadata.name } }
    - name: K8S_NAMESPACE
      valueFrom: { fieldRef: { fieldPath: metadata.namespace } }
    - name: OTEL_EXPORTER_OTLP_ENDPOINT
      value: {{ $v.otel.endpoint | quote }}
    - name: OTEL_EXPORTER_OTLP_PROTOCOL
      value: {{ $v.otel.protocol | quote }}
    - name: OTEL_SERVICE_NAME
      value: {{ default (include "sluice.fullname" .) $v.otel.serviceName | quote }}
    - name: OTEL_RESOURCE_ATTRIBUTES
      value: {{ trimSuffix "," (printf "k8s.pod.name=$(K8S_POD_NAME),k8s.namespace.name=$(K8S_NAMESPACE),%s" $v.otel.resourceAttributes) | quote }}
    {{- if not (kindIs "invalid" $v.otel.samplerRatio) }}
    - name: OTEL_TRACES_SAMPLER
      value: parentbased_traceidratio
    - name: OTEL_TRACES_SAMPLER_ARG
      value: {{ $v.otel.samplerRatio | toString | quote }}
    {{- end }}
    {{- end }}
    {{- with $v.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  startupProbe:
    httpGet: { path: /healthz, port: sluice-admin }
    periodSeconds: 1
    failureThreshold: 30
  livenessProbe:
    httpGet: { path: /healthz, port: sluice-admin }
    periodSeconds: 10
    timeoutSeconds: 2
    failureThreshold: 3
  readinessProbe:
    httpGet: { path: /readyz, port: sluice-admin }
    periodSeconds: 5
    timeoutSeconds: 2
    failureThreshold: 2
  {{- if gt (int $v.preStopSleepSeconds) 0 }}
  lifecycle:
    preStop:
      exec:
        command: ["sleep", {{ $v.preStopSleepSeconds | toString | quote }}]
  {{- end }}
  resources:
    {{- toYaml $v.resources | nindent 4 }}
  securityContext:
    {{- toYaml $v.securityContext | nindent 4 }}
  volumeMounts:
    # A directory mount, not subPath: ConfigMap updates reach the file and sluice reloads it.
    - name: sluice-config
      mountPath: /etc/sluice
      readOnly: true
    {{- /* Secrets as directories too: a renewal reaches the files and sluice reloads them. */}}
    {{- if $v.tls.secretName }}
    - name: sluice-tls
      mountPath: /etc/sluice-tls/listener
      readOnly: true
    {{- end }}
    {{- if $v.tls.clientCA.secretName }}
    - name: sluice-client-ca
      mountPath: /etc/sluice-tls/client-ca
      readOnly: true
    {{- end }}
    {{- if and $v.upstreamTLS.enabled $v.upstreamTLS.caSecretName }}
    - name: sluice-upstream-ca
      mountPath: /etc/sluice-tls/upstream-ca
      readOnly: true
    {{- end }}
    {{- if and $v.upstreamTLS.enabled $v.upstreamTLS.clientCertSecretName }}
    - name: sluice-upstream-client
      mountPath: /etc/sluice-tls/upstream-client
      readOnly: true
    {{- end }}
{{- end -}}

{{- define "sluice.sidecar.initContainers" -}}
{{- if .values.sidecar.native }}{{ include "sluice.sidecar.container" . }}{{ end -}}
{{- end -}}

{{- define "sluice.sidecar.containers" -}}
{{- if not .values.sidecar.native }}{{ include "sluice.sidecar.container" . }}{{ end -}}
{{- end -}}

{{- define "sluice.sidecar.volumes" -}}
{{- $v := .values -}}
- name: sluice-config
  configMap:
    name: {{ include "sluice.fullname" . }}-config
{{- if $v.tls.secretName }}
- name: sluice-tls
  secret:
    secretName: {{ $v.tls.secretName }}
    items: [{ key: tls.crt, path: tls.crt }, { key: tls.key, path: tls.key }]
{{- end }}
{{- if $v.tls.clientCA.secretName }}
- name: sluice-client-ca
  secret:
    secretName: {{ $v.tls.clientCA.secretName }}
    items: [{ key: {{ $v.tls.clientCA.key }}, path: {{ $v.tls.clientCA.key }} }]
{{- end }}
{{- if and $v.upstreamTLS.enabled $v.upstreamTLS.caSecretName }}
- name: sluice-upstream-ca
  secret:
    secretName: {{ $v.upstreamTLS.caSecretName }}
    items: [{ key: ca.crt, path: ca.crt }]
{{- end }}
{{- if and $v.upstreamTLS.enabled $v.upstreamTLS.clientCertSecretName }}
- name: sluice-upstream-client
  secret:
    secretName: {{ $v.upstreamTLS.clientCertSecretName }}
    items: [{ key: tls.crt, path: tls.crt }, { key: tls.key, path: tls.key }]
{{- end }}
{{- end -}}
