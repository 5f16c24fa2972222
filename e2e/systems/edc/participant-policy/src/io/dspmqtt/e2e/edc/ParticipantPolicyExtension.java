/*
 * Test infrastructure, not shipped: gives the e2e suite's EDC control planes what a Factory-X or
 * Tractus-X connector's policy extension gives a production one, a function for the participant
 * constraints the operator writes (`BusinessPartnerDID` and `BusinessPartnerNumber`, `eq`, `neq`,
 * `isAnyOf`, `isNoneOf`). Stock EDC binds neither: a constraint whose left operand is bound to no
 * scope is filtered out, and so is a permission whose action is bound to none (stock EDC binds
 * ODRL's `use` to no scope either), so without this every consumer saw every asset in its catalog.
 *
 * The participant is the identity the control plane's identity service established for the
 * requesting connector (with iam-mock: the `client_id` claim, the consumer's `edc.participant.id`).
 * Bound in the catalog scope (who sees the offer) and the negotiation scope (who may sign).
 */
package io.dspmqtt.e2e.edc;

import java.util.Collection;
import java.util.List;

import org.eclipse.edc.connector.controlplane.catalog.spi.policy.CatalogPolicyContext;
import org.eclipse.edc.connector.controlplane.contract.spi.policy.ContractNegotiationPolicyContext;
import org.eclipse.edc.participant.spi.ParticipantAgentPolicyContext;
import org.eclipse.edc.policy.engine.spi.AtomicConstraintRuleFunction;
import org.eclipse.edc.policy.engine.spi.PolicyEngine;
import org.eclipse.edc.policy.engine.spi.RuleBindingRegistry;
import org.eclipse.edc.policy.model.Operator;
import org.eclipse.edc.policy.model.Permission;
import org.eclipse.edc.runtime.metamodel.annotation.Extension;
import org.eclipse.edc.runtime.metamodel.annotation.Inject;
import org.eclipse.edc.spi.system.ServiceExtension;
import org.eclipse.edc.spi.system.ServiceExtensionContext;

@Extension(value = ParticipantPolicyExtension.NAME)
public class ParticipantPolicyExtension implements ServiceExtension {
    static final String NAME = "mqtt-dsp-operator e2e: participant constraints";
    static final String EDC_NAMESPACE = "https://w3id.org/edc/v0.0.1/ns/";
    static final String ODRL_USE = "http://www.w3.org/ns/odrl/2/use";
    static final List<String> SCOPES =
            List.of(CatalogPolicyContext.CATALOG_SCOPE, ContractNegotiationPolicyContext.NEGOTIATION_SCOPE);
    static final List<String> LEFT_OPERANDS =
            List.of(EDC_NAMESPACE + "BusinessPartnerDID", EDC_NAMESPACE + "BusinessPartnerNumber");

    @Inject
    private PolicyEngine policyEngine;

    @Inject
    private RuleBindingRegistry ruleBindingRegistry;

    @Override
    public String name() {
        return NAME;
    }

    @Override
    public void initialize(ServiceExtensionContext context) {
        for (var scope : SCOPES) {
            ruleBindingRegistry.bind(ODRL_USE, scope);
            for (var leftOperand : LEFT_OPERANDS) {
                ruleBindingRegistry.bind(leftOperand, scope);
            }
        }
        for (var leftOperand : LEFT_OPERANDS) {
            policyEngine.registerFunction(CatalogPolicyContext.class, Permission.class, leftOperand,
                    new IsParticipant<>());
            policyEngine.registerFunction(ContractNegotiationPolicyContext.class, Permission.class, leftOperand,
                    new IsParticipant<>());
        }
        context.getMonitor().info(NAME + ": bound " + LEFT_OPERANDS);
    }

    /** True when the requesting participant's identity satisfies the constraint. */
    static final class IsParticipant<C extends ParticipantAgentPolicyContext>
            implements AtomicConstraintRuleFunction<Permission, C> {
        @Override
        public boolean evaluate(Operator operator, Object rightOperand, Permission rule, C context) {
            var agent = context.participantAgent();
            var identity = agent == null ? null : agent.getIdentity();
            if (identity == null) {
                context.reportProblem("the requesting participant has no identity");
                return false;
            }
            return switch (operator) {
                case EQ -> identity.equals(String.valueOf(rightOperand));
                case NEQ -> !identity.equals(String.valueOf(rightOperand));
                case IS_ANY_OF, IN -> values(rightOperand).contains(identity);
                case IS_NONE_OF -> !values(rightOperand).contains(identity);
                default -> {
                    context.reportProblem("unsupported operator " + operator + " for a participant constraint");
                    yield false;
                }
            };
        }

        private static List<String> values(Object rightOperand) {
            if (rightOperand instanceof Collection<?> collection) {
                return collection.stream().map(String::valueOf).toList();
            }
            return List.of(String.valueOf(rightOperand));
        }

        @Override
        public String name() {
            return "participant identity";
        }
    }
}
