{{/* A Deployment of `posmon run` with one stage (run.stage, set as POSMON_RUN__STAGE):
     `component` run (the main scorer) or cards (the card stage apart). Both take run's
     configuration file, probes, state volume, scheduling and extras; `replicas` and
     `resources` are their own. */}}
{{- define "posmon.scorer" -}}
{{- $root := .root -}}
{{- $run := $root.Values.run -}}
{{- $component := .component -}}
{{- $stage := .stage -}}
{{- $replicas := .replicas -}}
{{- $resources := .resources -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "posmon.fullname" $root }}-{{ $component }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "posmon.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ $component }}
spec:
  {{- if not $root.Values.autoscaling.enabled }}
  replicas: {{ $replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  strategy:
    {{- toYaml $run.strategy | nindent 4 }}
  selector:
    matchLabels:
      {{- include "posmon.selectorLabels" $root | nindent 6 }}
      app.kubernetes.io/component: {{ $component }}
  template:
    metadata:
      labels:
        {{- include "posmon.labels" $root | nindent 8 }}
        app.kubernetes.io/component: {{ $component }}
        {{- with $run.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        checksum/config: {{ include "posmon.runConfig" $root | sha256sum }}
        {{- with $run.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "posmon.serviceAccountName" $root }}
      automountServiceAccountToken: false
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $run.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      terminationGracePeriodSeconds: {{ $run.terminationGracePeriodSeconds }}
      containers:
        - name: {{ $component }}
          image: {{ include "posmon.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args: ["run"]
          env:
            - name: POSMON_CONFIG
              value: /etc/posmon/run.yaml
            - name: POSMON_RUN__STAGE
              value: {{ $stage }}
            {{- if $run.staticMembership }}
            - name: POSMON_KAFKA__GROUP_INSTANCE_ID
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
            {{- end }}
            {{- with include "posmon.kafkaSecretEnv" $root | trim }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with $run.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          ports:
            - name: metrics
              containerPort: {{ $root.Values.service.port }}
              protocol: TCP
          startupProbe:
            {{- include "posmon.probe" (dict "path" "/healthz" "probe" $run.startupProbe) | nindent 12 }}
          livenessProbe:
            {{- include "posmon.probe" (dict "path" "/healthz" "probe" $run.livenessProbe) | nindent 12 }}
          readinessProbe:
            {{- include "posmon.probe" (dict "path" "/readyz" "probe" $run.readinessProbe) | nindent 12 }}
          resources:
            {{- toYaml $resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            - name: config
              mountPath: /etc/posmon
              readOnly: true
            - name: tmp
              mountPath: /tmp
            - name: state
              mountPath: /var/lib/posmon
            {{- with $run.modelVolume }}
            {{- if .existingClaim }}
            - name: model
              mountPath: {{ .mountPath }}
              readOnly: true
              {{- with .subPath }}
              subPath: {{ . }}
              {{- end }}
            {{- end }}
            {{- end }}
            {{- with include "posmon.kafkaTlsVolumeMount" $root | trim }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with $run.extraVolumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        - name: config
          configMap:
            name: {{ include "posmon.fullname" $root }}
            items:
              - key: run.yaml
                path: run.yaml
        - name: tmp
          emptyDir:
            sizeLimit: 256Mi
        - name: state
          {{- if $run.state.persistence.enabled }}
          persistentVolumeClaim:
            claimName: {{ $run.state.persistence.existingClaim | default (printf "%s-state" (include "posmon.fullname" $root)) }}
          {{- else }}
          emptyDir:
            sizeLimit: {{ $run.state.sizeLimit }}
          {{- end }}
        {{- if $run.modelVolume.existingClaim }}
        - name: model
          persistentVolumeClaim:
            claimName: {{ $run.modelVolume.existingClaim }}
            readOnly: true
        {{- end }}
        {{- with include "posmon.kafkaTlsVolume" $root | trim }}
        {{- . | nindent 8 }}
        {{- end }}
        {{- with $run.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $run.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $run.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $run.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $run.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end -}}

{{/* KEDA's ScaledObject of one scorer Deployment: `component`, `max` replicas, `triggers` (a topic
     and a group each). */}}
{{- define "posmon.scaledObject" -}}
{{- $root := .root }}
{{- with $root.Values.autoscaling }}
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: {{ include "posmon.fullname" $root }}-{{ $.component }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "posmon.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ $.component }}
spec:
  scaleTargetRef:
    name: {{ include "posmon.fullname" $root }}-{{ $.component }}
  minReplicaCount: {{ .minReplicas }}
  maxReplicaCount: {{ $.max }}
  pollingInterval: {{ .pollingInterval }}
  cooldownPeriod: {{ .cooldownPeriod }}
  advanced:
    horizontalPodAutoscalerConfig:
      behavior:
        scaleUp:
          stabilizationWindowSeconds: {{ .scaleUpStabilizationSeconds }}
          selectPolicy: Min
          policies:
            - type: Pods
              value: 1
              periodSeconds: {{ .scaleUpPeriodSeconds }}
        scaleDown:
          stabilizationWindowSeconds: {{ .scaleDownStabilizationSeconds }}
          policies:
            - type: Pods
              value: 1
              periodSeconds: {{ .scaleUpPeriodSeconds }}
  triggers:
    {{- range $trigger := $.triggers }}
    - type: kafka
      metadata:
        bootstrapServers: {{ $root.Values.config.kafka.bootstrap_servers | quote }}
        consumerGroup: {{ $trigger.group | quote }}
        topic: {{ $trigger.topic | quote }}
        lagThreshold: {{ $root.Values.autoscaling.lagThreshold | quote }}
        # A new group (nothing committed yet) counts its whole topic as lag.
        offsetResetPolicy: earliest
        # Never more members than partitions: an idle member holds nothing.
        allowIdleConsumers: "false"
      {{- with $root.Values.autoscaling.triggerAuthenticationName }}
      authenticationRef:
        name: {{ . }}
      {{- end }}
    {{- end }}
{{- end }}
{{- end }}
