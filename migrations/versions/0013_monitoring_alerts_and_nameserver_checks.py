"""monitoring alerts and nameserver checks

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05

What the control plane observes and what it raises: node metrics and site checks (raw
and aggregated, one table each), nameserver checks and the nameservers expected per
zone, alert rules, alerts with their transitions, silences; on each node what its
last metrics poll learnt; and on audit rows and rollouts the id of the request that
made them.

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('zone_nameservers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('zone', sa.String(length=253), nullable=False),
    sa.Column('nameservers', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_zone_nameservers')),
    sa.UniqueConstraint('zone', name=op.f('uq_zone_nameservers_zone'))
    )
    op.create_table('alert_rules',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('kind', sa.Enum('cpu', 'memory', 'disk', 'load', 'node_unreachable', 'proxy_down', 'site_down', 'cert_expiring', 'cert_mismatch', 'deployment_failed', 'drift', 'ns_mismatch', name='alert_kind', native_enum=False, create_constraint=True, length=32), nullable=False),
    sa.Column('threshold', sa.Float(), nullable=True),
    sa.Column('duration_seconds', sa.Integer(), nullable=False),
    sa.Column('severity', sa.Enum('warning', 'critical', name='alert_severity', native_enum=False, create_constraint=True, length=32), nullable=False),
    sa.Column('pool_id', sa.Integer(), nullable=True),
    sa.Column('renotify_seconds', sa.Integer(), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['pool_id'], ['pools.id'], name=op.f('fk_alert_rules_pool_id_pools'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alert_rules'))
    )
    with op.batch_alter_table('alert_rules', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_alert_rules_pool_id'), ['pool_id'], unique=False)

    op.create_table('alerts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('rule_id', sa.Integer(), nullable=False),
    sa.Column('subject_kind', sa.Enum('node', 'site', 'pool', 'rollout', name='alert_subject_kind', native_enum=False, create_constraint=True, length=32), nullable=False),
    sa.Column('subject_id', sa.Integer(), nullable=False),
    sa.Column('node_id', sa.Integer(), nullable=True),
    sa.Column('site_id', sa.Integer(), nullable=True),
    sa.Column('pool_id', sa.Integer(), nullable=True),
    sa.Column('state', sa.Enum('pending', 'firing', 'resolved', name='alert_state', native_enum=False, create_constraint=True, length=32), nullable=False),
    sa.Column('value', sa.Float(), nullable=True),
    sa.Column('summary', sa.String(length=500), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('fired_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_notified_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('acknowledged_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('acknowledged_by_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['acknowledged_by_id'], ['users.id'], name=op.f('fk_alerts_acknowledged_by_id_users'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['node_id'], ['nodes.id'], name=op.f('fk_alerts_node_id_nodes'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['pool_id'], ['pools.id'], name=op.f('fk_alerts_pool_id_pools'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['rule_id'], ['alert_rules.id'], name=op.f('fk_alerts_rule_id_alert_rules'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['site_id'], ['sites.id'], name=op.f('fk_alerts_site_id_sites'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alerts'))
    )
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_alerts_node_id'), ['node_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_alerts_pool_id'), ['pool_id'], unique=False)
        batch_op.create_index('ix_alerts_rule_subject', ['rule_id', 'subject_kind', 'subject_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_alerts_site_id'), ['site_id'], unique=False)
        batch_op.create_index('ix_alerts_state', ['state'], unique=False)
        batch_op.create_index('uq_alerts_open_subject', ['rule_id', 'subject_kind', 'subject_id'], unique=True, sqlite_where=sa.text("state != 'resolved'"), postgresql_where=sa.text("state != 'resolved'"))

    op.create_table('nameserver_checks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('site_id', sa.Integer(), nullable=False),
    sa.Column('hostname', sa.String(length=253), nullable=False),
    sa.Column('zone', sa.String(length=253), nullable=False),
    sa.Column('status', sa.Enum('ok', 'mismatch', 'error', name='nameserver_status', native_enum=False, create_constraint=True, length=32), nullable=False),
    sa.Column('expected', sa.JSON(), nullable=False),
    sa.Column('found', sa.JSON(), nullable=False),
    sa.Column('error', sa.String(length=300), nullable=False),
    sa.Column('checked_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['site_id'], ['sites.id'], name=op.f('fk_nameserver_checks_site_id_sites'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_nameserver_checks')),
    sa.UniqueConstraint('site_id', 'hostname', name=op.f('uq_nameserver_checks_site_id'))
    )
    with op.batch_alter_table('nameserver_checks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_nameserver_checks_site_id'), ['site_id'], unique=False)

    op.create_table('node_metrics',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('node_id', sa.Integer(), nullable=False),
    sa.Column('period', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('samples', sa.Integer(), nullable=False),
    sa.Column('cpu_percent', sa.Float(), nullable=True),
    sa.Column('mem_percent', sa.Float(), nullable=True),
    sa.Column('swap_percent', sa.Float(), nullable=True),
    sa.Column('load1', sa.Float(), nullable=True),
    sa.Column('load5', sa.Float(), nullable=True),
    sa.Column('load15', sa.Float(), nullable=True),
    sa.Column('disk_percent', sa.Float(), nullable=True),
    sa.Column('filesystems', sa.JSON(), nullable=True),
    sa.Column('net_rx_bps', sa.Float(), nullable=True),
    sa.Column('net_tx_bps', sa.Float(), nullable=True),
    sa.Column('uptime_seconds', sa.BigInteger(), nullable=True),
    sa.Column('connections', sa.Float(), nullable=True),
    sa.Column('requests_per_second', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['node_id'], ['nodes.id'], name=op.f('fk_node_metrics_node_id_nodes'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_node_metrics'))
    )
    with op.batch_alter_table('node_metrics', schema=None) as batch_op:
        batch_op.create_index('ix_node_metrics_node_period_at', ['node_id', 'period', 'at'], unique=False)
        batch_op.create_index('ix_node_metrics_period_at', ['period', 'at'], unique=False)

    op.create_table('silences',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('node_id', sa.Integer(), nullable=True),
    sa.Column('pool_id', sa.Integer(), nullable=True),
    sa.Column('site_id', sa.Integer(), nullable=True),
    sa.Column('starts_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ends_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('reason', sa.String(length=200), nullable=False),
    sa.Column('created_by_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['created_by_id'], ['users.id'], name=op.f('fk_silences_created_by_id_users'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['node_id'], ['nodes.id'], name=op.f('fk_silences_node_id_nodes'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['pool_id'], ['pools.id'], name=op.f('fk_silences_pool_id_pools'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['site_id'], ['sites.id'], name=op.f('fk_silences_site_id_sites'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_silences'))
    )
    op.create_table('site_checks',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('site_id', sa.Integer(), nullable=False),
    sa.Column('node_id', sa.Integer(), nullable=False),
    sa.Column('period', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('checks', sa.Integer(), nullable=False),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=True),
    sa.Column('response_ms', sa.Float(), nullable=True),
    sa.Column('error', sa.String(length=200), nullable=False),
    sa.Column('cert_not_after', sa.DateTime(timezone=True), nullable=True),
    sa.Column('cert_sha256', sa.String(length=64), nullable=True),
    sa.Column('cert_matches', sa.Boolean(), nullable=True),
    sa.ForeignKeyConstraint(['node_id'], ['nodes.id'], name=op.f('fk_site_checks_node_id_nodes'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['site_id'], ['sites.id'], name=op.f('fk_site_checks_site_id_sites'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_site_checks'))
    )
    with op.batch_alter_table('site_checks', schema=None) as batch_op:
        batch_op.create_index('ix_site_checks_node_id', ['node_id'], unique=False)
        batch_op.create_index('ix_site_checks_period_at', ['period', 'at'], unique=False)
        batch_op.create_index('ix_site_checks_site_period_at', ['site_id', 'period', 'at'], unique=False)

    op.create_table('alert_transitions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('alert_id', sa.Integer(), nullable=False),
    sa.Column('from_state', sa.String(length=16), nullable=True),
    sa.Column('to_state', sa.String(length=16), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('silenced', sa.Boolean(), nullable=False),
    sa.Column('notified_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['alert_id'], ['alerts.id'], name=op.f('fk_alert_transitions_alert_id_alerts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alert_transitions'))
    )
    with op.batch_alter_table('alert_transitions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_alert_transitions_alert_id'), ['alert_id'], unique=False)
        batch_op.create_index('ix_alert_transitions_held', ['alert_id'], unique=False, sqlite_where=sa.text('silenced = 1 AND notified_at IS NULL'), postgresql_where=sa.text('silenced AND notified_at IS NULL'))

    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('glances_api', sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column('metrics_error', sa.String(length=300), server_default='', nullable=False))
        batch_op.add_column(sa.Column('metrics_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('status_port', sa.Integer(), nullable=True))

    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.add_column(sa.Column('request_id', sa.String(length=128), server_default='', nullable=False))

    with op.batch_alter_table('rollouts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('request_id', sa.String(length=128), server_default='', nullable=False))



def downgrade():
    with op.batch_alter_table('rollouts', schema=None) as batch_op:
        batch_op.drop_column('request_id')

    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.drop_column('request_id')

    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.drop_column('status_port')
        batch_op.drop_column('metrics_at')
        batch_op.drop_column('metrics_error')
        batch_op.drop_column('glances_api')

    with op.batch_alter_table('alert_transitions', schema=None) as batch_op:
        batch_op.drop_index('ix_alert_transitions_held')
        batch_op.drop_index(batch_op.f('ix_alert_transitions_alert_id'))

    op.drop_table('alert_transitions')
    with op.batch_alter_table('site_checks', schema=None) as batch_op:
        batch_op.drop_index('ix_site_checks_site_period_at')
        batch_op.drop_index('ix_site_checks_period_at')
        batch_op.drop_index('ix_site_checks_node_id')

    op.drop_table('site_checks')
    op.drop_table('silences')
    with op.batch_alter_table('node_metrics', schema=None) as batch_op:
        batch_op.drop_index('ix_node_metrics_period_at')
        batch_op.drop_index('ix_node_metrics_node_period_at')

    op.drop_table('node_metrics')
    with op.batch_alter_table('nameserver_checks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_nameserver_checks_site_id'))

    op.drop_table('nameserver_checks')
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.drop_index('uq_alerts_open_subject')
        batch_op.drop_index('ix_alerts_state')
        batch_op.drop_index(batch_op.f('ix_alerts_site_id'))
        batch_op.drop_index('ix_alerts_rule_subject')
        batch_op.drop_index(batch_op.f('ix_alerts_pool_id'))
        batch_op.drop_index(batch_op.f('ix_alerts_node_id'))

    op.drop_table('alerts')
    with op.batch_alter_table('alert_rules', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_alert_rules_pool_id'))

    op.drop_table('alert_rules')
    op.drop_table('zone_nameservers')
