# bash completion for lora-apply(1)
_lora_apply()
{
	local cur prev
	cur=${COMP_WORDS[COMP_CWORD]}
	prev=${COMP_WORDS[COMP_CWORD-1]}
	case $prev in
	-m|--model|-o|--output)
		COMPREPLY=($(compgen -d -- "$cur"))
		return ;;
	--scale)
		return ;;
	esac
	COMPREPLY=($(compgen -W "--model --output --scale --force --dry-run --verbose --help --version" -- "$cur"))
}
complete -F _lora_apply lora-apply
