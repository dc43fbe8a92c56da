{{/* Names, labels and the pieces both Deployments share. */}}

{{- define "posmon.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "posmon.fullname" -}}
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

{{- define "posmon.selectorLabels" -}}
app.kubernetes.io/name: {{ include "posmon.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "posmon.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "posmon.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: posmon
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "posmon.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "posmon.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "posmon.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* posmon run's configuration: `config` as given, the model path of a mounted artifact, the
     metrics endpoint on the Service's port. Never a `dispatch:` section: the pager runs apart. */}}
{{- define "posmon.runConfig" -}}
{{- $config := deepCopy .Values.config -}}
{{- if .Values.run.modelVolume.existingClaim -}}
{{- $model := default dict $config.model -}}
{{- if not $model.path -}}
{{- $_ := set $model "path" .Values.run.modelVolume.mountPath -}}
{{- end -}}
{{- $_ := set $config "model" $model -}}
{{- end -}}
{{- $_ := set $config "metrics" (dict "host" "0.0.0.0" "port" (int .Values.service.port)) -}}
{{- toYaml $config -}}
{{- end -}}

{{/* posmon dispatch's configuration: the Kafka settings, its channels and routes, delivery. */}}
{{- define "posmon.dispatchConfig" -}}
{{- $config := dict "kafka" .Values.config.kafka "dispatch" .Values.dispatch.config -}}
{{- if .Values.dispatch.delivery -}}
{{- $_ := set $config "delivery" .Values.dispatch.delivery -}}
{{- end -}}
{{- $_ := set $config "metrics" (dict "host" "0.0.0.0" "port" (int .Values.service.port)) -}}
{{- toYaml $config -}}
{{- end -}}

{{/* The Kafka credentials, from existing Secrets, as the variables posmon reads them from. */}}
{{- define "posmon.kafkaSecretEnv" -}}
{{- with .Values.secrets.kafkaSaslPassword }}
- name: POSMON_KAFKA__SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .key }}
{{- end }}
{{- with .Values.secrets.kafkaSslPassword }}
- name: POSMON_KAFKA__SSL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .key }}
{{- end }}
{{- end -}}

{{- define "posmon.kafkaTlsVolumeMount" -}}
{{- if .Values.secrets.kafkaTlsSecret }}
- name: kafka-tls
  mountPath: /etc/posmon/kafka-tls
  readOnly: true
{{- end }}
{{- end -}}

{{- define "posmon.kafkaTlsVolume" -}}
{{- if .Values.secrets.kafkaTlsSecret }}
- name: kafka-tls
  secret:
    secretName: {{ .Values.secrets.kafkaTlsSecret }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{/* An HTTP probe of posmon's endpoint; `probe` is the values of one probe. */}}
{{- define "posmon.probe" -}}
httpGet:
  path: {{ .path }}
  port: metrics
{{- with .probe }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The scale-out's internal topic and the card stage's group, as posmon derives them. */}}
{{- define "posmon.cardsTopic" -}}
{{- .Values.config.kafka.cards_topic | default (printf "%s.cards" (.Values.config.kafka.group | default "posmon")) -}}
{{- end -}}

{{- define "posmon.cardsGroup" -}}
{{- .Values.config.kafka.cards_group | default (printf "%s-cards" (.Values.config.kafka.group | default "posmon")) -}}
{{- end -}}
