{{/* Names ------------------------------------------------------------------------------------ */}}
{{- define "vllm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "vllm.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "vllm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "vllm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vllm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The helm test Pod must not match the Deployment's selector (its ReplicaSet would adopt it). */}}
{{- define "vllm.testSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-test" (include "vllm.name" . | trunc 58 | trimSuffix "-") }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "vllm.labels" -}}
helm.sh/chart: {{ include "vllm.chart" . }}
{{ include "vllm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubetune
{{- end -}}

{{- define "vllm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "vllm.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "vllm.image" -}}
{{- if .digest -}}
{{- printf "%s@%s" .repository .digest -}}
{{- else -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}
{{- end -}}

{{/* The release ---------------------------------------------------------------------------------
release.uri is .../releases/<model>/<version>[/] (the schema enforces it); the release directory in
the pod is <cache.mountPath>/<model>/<version>, so that one cache PVC can hold several releases. */}}
{{- define "vllm.releaseModelVersion" -}}
{{- $uri := required "release.uri is required: s3://<bucket>/<prefix>/releases/<model>/<version>/" .Values.release.uri -}}
{{- regexFind "[^/]+/[^/]+$" (trimSuffix "/" $uri) -}}
{{- end -}}

{{- define "vllm.releaseDir" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.cache.mountPath) (include "vllm.releaseModelVersion" .) -}}
{{- end -}}

{{- define "vllm.servedName" -}}
{{- if .Values.model.servedName -}}
{{- .Values.model.servedName -}}
{{- else -}}
{{- include "vllm.releaseModelVersion" . | splitList "/" | first -}}
{{- end -}}
{{- end -}}

{{/* A path in the release directory, unless absolute. Call with (list $ "path"). */}}
{{- define "vllm.releasePath" -}}
{{- $ctx := index . 0 -}}
{{- $path := index . 1 -}}
{{- if hasPrefix "/" $path -}}
{{- trimSuffix "/" $path -}}
{{- else -}}
{{- printf "%s/%s" (include "vllm.releaseDir" $ctx) (trimSuffix "/" $path) -}}
{{- end -}}
{{- end -}}

{{- define "vllm.tensorParallelSize" -}}
{{- $gpus := int .Values.gpu.count -}}
{{- $tp := 1 -}}
{{- if not (kindIs "invalid" .Values.vllm.tensorParallelSize) -}}
{{- $tp = int .Values.vllm.tensorParallelSize -}}
{{- else if gt $gpus 0 -}}
{{- $tp = $gpus -}}
{{- end -}}
{{- if and (gt $gpus 0) (gt $tp $gpus) -}}
{{- fail (printf "vllm.tensorParallelSize (%d) needs at least as many GPUs; gpu.count is %d" $tp $gpus) -}}
{{- end -}}
{{- $tp -}}
{{- end -}}

{{/* The parts of the release `kubetune fetch` downloads, comma-separated: fetch.parts, else model.source,
the parts of relative adapter paths and the part holding a relative model.chatTemplate. */}}
{{- define "vllm.fetchParts" -}}
{{- $parts := list -}}
{{- if .Values.fetch.parts -}}
{{- $parts = .Values.fetch.parts -}}
{{- else -}}
{{- $parts = list .Values.model.source -}}
{{- range .Values.lora.adapters -}}
{{- if not (hasPrefix "/" .path) -}}
{{- $parts = append $parts (regexFind "^[^/]+" .path) -}}
{{- end -}}
{{- end -}}
{{- /* a chat template inside a part (e.g. merged/chat_template.jinja while serving base) */ -}}
{{- $tpl := .Values.model.chatTemplate -}}
{{- if and $tpl (not (hasPrefix "/" $tpl)) (contains "/" $tpl) -}}
{{- $parts = append $parts (regexFind "^[^/]+" $tpl) -}}
{{- end -}}
{{- end -}}
{{- $parts | uniq | join "," -}}
{{- end -}}

{{/* The vLLM arguments -------------------------------------------------------------------------
The one place they are built. Rendered as a JSON list: the model directory first (positional, as
`vllm serve MODEL` takes it), then flags as --flag=value, then --enable-lora and one --lora-modules
followed by name=path items, then vllm.extraArgs. `kubetune serve-local` reads this list back from
`helm template` (see README "The vLLM arguments"). */}}
{{- define "vllm.args" -}}
{{- $v := .Values -}}
{{- $args := list (include "vllm.releasePath" (list . $v.model.source)) -}}
{{- $args = append $args (printf "--served-model-name=%s" (include "vllm.servedName" .)) -}}
{{- $args = append $args (printf "--max-model-len=%d" (int64 $v.model.maxModelLen)) -}}
{{- $args = append $args (printf "--gpu-memory-utilization=%v" (float64 $v.vllm.gpuMemoryUtilization)) -}}
{{- $args = append $args (printf "--tensor-parallel-size=%s" (include "vllm.tensorParallelSize" .)) -}}
{{- $args = append $args "--host=0.0.0.0" -}}
{{- $args = append $args (printf "--port=%d" (int64 $v.vllm.port)) -}}
{{- if $v.model.chatTemplate -}}
{{- $args = append $args (printf "--chat-template=%s" (include "vllm.releasePath" (list . $v.model.chatTemplate))) -}}
{{- end -}}
{{- if $v.lora.adapters -}}
{{- $args = append $args "--enable-lora" -}}
{{- if not (kindIs "invalid" $v.lora.maxLoraRank) -}}
{{- $args = append $args (printf "--max-lora-rank=%d" (int64 $v.lora.maxLoraRank)) -}}
{{- end -}}
{{- if not (kindIs "invalid" $v.lora.maxLoras) -}}
{{- $args = append $args (printf "--max-loras=%d" (int64 $v.lora.maxLoras)) -}}
{{- end -}}
{{- $args = append $args "--lora-modules" -}}
{{- range $v.lora.adapters -}}
{{- $args = append $args (printf "%s=%s" .name (include "vllm.releasePath" (list $ .path))) -}}
{{- end -}}
{{- end -}}
{{- range $v.vllm.extraArgs -}}
{{- $args = append $args (toString .) -}}
{{- end -}}
{{- toJson $args -}}
{{- end -}}

{{/* Checks across values that the schema cannot express. */}}
{{- define "vllm.validate" -}}
{{- $as := .Values.autoscaling -}}
{{- if and $as.enabled (gt (int $as.minReplicas) (int $as.maxReplicas)) -}}
{{- fail (printf "autoscaling.minReplicas (%d) is above autoscaling.maxReplicas (%d)" (int $as.minReplicas) (int $as.maxReplicas)) -}}
{{- end -}}
{{- $names := list -}}
{{- range .Values.lora.adapters -}}
{{- if has .name $names -}}
{{- fail (printf "lora.adapters: the name %q is used twice" .name) -}}
{{- end -}}
{{- $names = append $names .name -}}
{{- end -}}
{{- end -}}

{{/* PromQL label matchers of this deployment's series. */}}
{{- define "vllm.metricSelector" -}}
{{- if .Values.metrics.prometheusRule.selector -}}
{{- .Values.metrics.prometheusRule.selector -}}
{{- else -}}
{{- printf "namespace=%q,job=%q" .Release.Namespace (include "vllm.fullname" .) -}}
{{- end -}}
{{- end -}}
