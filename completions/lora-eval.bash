# bash completion for lora-eval(1)
_lora_eval()
{
	local cur prev
	cur=${COMP_WORDS[COMP_CWORD]}
	prev=${COMP_WORDS[COMP_CWORD-1]}
	case $prev in
	-m|--model)
		COMPREPLY=($(compgen -d -- "$cur"))
		return ;;
	-d|--data|--predictions|--demos)
		COMPREPLY=($(compgen -f -- "$cur"))
		return ;;
	--max-new-tokens|--icl|--max-examples)
		return ;;
	esac
	COMPREPLY=($(compgen -W "--model --data --generate --max-new-tokens --predictions --icl --demos --max-examples --bf16 --verbose --quiet --help --version" -- "$cur"))
}
complete -F _lora_eval lora-eval
